"""compose.yaml and deploy/nats-server.conf: one NATS user per role, each service only its
own (its user, its password, its JetStream prefix), the passwords without defaults, and the
`.env` recipe giving every required variable; run for real against nats-server."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from ops.platform.settings import DEFAULT_JS_API, PREFIX, ROLE_JS_API, Common, load
from ops.tools.cli import cli
from ops.tools.paths import NATS_ROLES, nats_config_file, nats_js_api
from tests.compose_support import (
    APP_SERVICES,
    COMPOSE_FILE,
    HOST,
    INTERPOLATION,
    NATS_CLI_ROLE,
    NATS_SYNC_VAR,
    README,
    RECIPE,
    ROLE_OF,
    ROOT,
    SERVER_PASSWORD_VARS,
    SETTINGS_OF,
    _bind_mounts,
    _depends,
    _env,
    _flag,
    _recipe_env,
    _resolved,
    _services,
)

# --- NATS: one user per role, each service only its own ---------------------------


@pytest.mark.parametrize("service", sorted(ROLE_OF))
def test_each_process_is_exactly_its_roles_nats_user(compose: dict[str, Any], service: str) -> None:
    """The settings the process loads name its role, with its role's password, and the
    JetStream API prefix its role's account has (ops/paths.py `nats_js_api`)."""
    role = ROLE_OF[service]
    env = _resolved(compose, service, HOST)
    settings = load(SETTINGS_OF[service], env)
    assert settings.nats_user == role
    assert settings.nats_password is not None
    assert settings.nats_password.reveal() == HOST[SERVER_PASSWORD_VARS[role]]
    assert settings.nats_js_api == nats_js_api(role)
    assert (settings.nats_creds, settings.nats_nkey) == (None, None)


@pytest.mark.parametrize("service", sorted(NATS_CLI_ROLE))
def test_the_nats_cli_is_the_operators_user(compose: dict[str, Any], service: str) -> None:
    role = NATS_CLI_ROLE[service]
    env = _resolved(compose, service, HOST)
    assert env["NATS_USER"] == role
    assert env["NATS_PASSWORD"] == HOST[SERVER_PASSWORD_VARS[role]]


def test_no_service_sees_another_roles_password(compose: dict[str, Any]) -> None:
    """The server gets every role's; a process (or the nats CLI) its own role's; the rest
    none."""
    roles = {**ROLE_OF, **NATS_CLI_ROLE}
    passwords = {role: HOST[var] for role, var in SERVER_PASSWORD_VARS.items()}
    for name in _services(compose):
        env = _resolved(compose, name, HOST)
        seen = {role for role, pw in passwords.items() if any(pw in v for v in env.values())}
        named = {role for role, var in SERVER_PASSWORD_VARS.items() if var in env}
        if name == "nats":
            assert seen == named == set(NATS_ROLES), name
        else:
            assert seen == ({roles[name]} if name in roles else set()), (name, seen)
            assert not named, f"{name} has the server's variables {sorted(named)}"


def test_the_passwords_have_no_defaults(compose: dict[str, Any]) -> None:
    """A forgotten password stops `docker compose` itself, before any container starts."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    required = {*SERVER_PASSWORD_VARS.values(), PREFIX + "SECRETS"}
    references = [m for m in INTERPOLATION.finditer(text) if m["name"] in required]
    assert {m["name"] for m in references} == required
    for match in references:
        assert match["rest"].startswith(":?"), f"{match[0]}: use ${{NAME:?message}}"
    for var in SERVER_PASSWORD_VARS.values():
        with pytest.raises(AssertionError, match="compose would stop"):
            _resolved(compose, "nats", {k: v for k, v in HOST.items() if k != var})


def test_nats_gets_every_roles_password_and_the_sync_policy(compose: dict[str, Any]) -> None:
    names = {name for name in _env(compose, "nats") if name.startswith(PREFIX)}
    assert names == {*SERVER_PASSWORD_VARS.values(), NATS_SYNC_VAR}
    env = _resolved(compose, "nats", HOST)
    for var in SERVER_PASSWORD_VARS.values():
        assert env[var] == HOST[var], var
    # Unset or empty on the host: fsync before every PubAck, the project's default.
    assert env[NATS_SYNC_VAR] == "always" == Common().nats_sync
    assert _resolved(compose, "nats", HOST | {NATS_SYNC_VAR: ""})[NATS_SYNC_VAR] == "always"
    chosen = _resolved(compose, "nats", HOST | {NATS_SYNC_VAR: "1s"})[NATS_SYNC_VAR]
    assert chosen == "1s" == load(Common, {NATS_SYNC_VAR: chosen}).nats_sync


def test_nats_runs_the_repositorys_config(compose: dict[str, Any]) -> None:
    """deploy/nats-server.conf itself, read-only, is the file the server is told to read."""
    command = [str(arg) for arg in _services(compose)["nats"]["command"]]
    config = _flag(command, "-c", "--config")
    mounts = _bind_mounts(compose, "nats")
    assert config in mounts, f"{config} is not mounted"
    source, options = mounts[config]
    assert source == nats_config_file()
    assert "ro" in options.split(","), "mount the config read-only"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_the_processes_find_jetstream_under_their_accounts_prefix(
    compose: dict[str, Any], service: str
) -> None:
    raw = _env(compose, service)[PREFIX + "NATS_JS_API"]
    assert raw.startswith("$$"), "escape the `$`: Compose would read `$JS` as a variable"
    assert _resolved(compose, service, HOST)[PREFIX + "NATS_JS_API"] == ROLE_JS_API
    ops_api = _resolved(compose, "provision", HOST).get(PREFIX + "NATS_JS_API", "")
    assert ops_api in {"", DEFAULT_JS_API}, "ops is in the streams' own account"


def test_provisioning_is_a_one_shot_of_the_same_image(compose: dict[str, Any]) -> None:
    """`alertbridge provision` (the [project.scripts] entry point) runs once per `up`."""
    services = _services(compose)
    one_shot = services["provision"]
    assert one_shot["build"] == services["worker"]["build"]
    assert one_shot["image"] == services["worker"]["image"]
    command = [str(arg) for arg in one_shot["command"]]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert scripts["scripts"][command[0]] == "ops.tools.cli:main"
    assert command[1:] == ["provision"] and "provision" in cli.commands
    assert one_shot["restart"] == "no"
    assert "healthcheck" not in one_shot and "ports" not in one_shot
    # A failed provisioning stops the start: the worker waits for it to succeed.
    assert _depends(compose, "worker")["provision"] == "service_completed_successfully"


def test_the_env_recipe_gives_every_required_variable(compose: dict[str, Any]) -> None:
    """The header's `>> .env` lines, run, give each variable compose requires, with NATS
    passwords nats-server reads as strings; the README shows the same lines."""
    env = _recipe_env()
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    required = {m["name"] for m in INTERPOLATION.finditer(text) if m["rest"].startswith(":?")}
    # A secret made from a variable (the console's token) needs it as much.
    required |= {s["environment"] for s in compose.get("secrets", {}).values()}
    assert set(env) == required
    for var in SERVER_PASSWORD_VARS.values():
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", env[var]), var
    assert len(set(env.values())) == len(env), "one password per role"
    readme = README.read_text(encoding="utf-8")
    for match in RECIPE.finditer(text):
        assert match["command"] in readme, f"README lacks: {match['command']}"
    assert _resolved(compose, "nats", env)
