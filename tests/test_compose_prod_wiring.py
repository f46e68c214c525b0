"""compose.prod.yaml, checked without Docker: wired. Every secret, config, volume and
network a service names is defined, every file it reads exists once the secrets recipe
of docs/deploy.md has run, each service mounts only its own role's secrets and holds no
password in its environment, and each process is its role's NATS user. Then the `nats`
service's entrypoint script is run for real on the repository's nats-server.conf with
the recipe's secret files, and each role connects with exactly its service's variables.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from ops.platform.settings import PREFIX, load
from ops.tools.paths import NATS_ROLES, nats_config_file, nats_js_api, nats_server_binary
from tests.compose_prod_support import (
    CONF_PASSWORD,
    DOCKERFILE,
    EXPORT,
    PROD_FILE,
    ROLE_OF,
    ROOT,
    SECRETS_DIR,
    SECRETS_OF,
    SETTINGS_OF,
    made_files,
    made_fixture,  # noqa: F401 (the `made` fixture)
    names,
    prod_fixture,  # noqa: F401 (the `prod` fixture)
    resolved,
    secret_files_fixture,  # noqa: F401 (the autouse `_secret_files` fixture)
    services,
    with_files,
)
from tests.compose_support import (
    _as_run_here,
    _module_main_exists,
    _python_module,
    _roles_after_provisioning,
    _seconds,
)
from tests.support import eventually, free_port
from worker.settings import WorkerSettings

# --- the wiring ------------------------------------------------------------------


def test_everything_a_service_names_is_defined(prod: dict[str, Any]) -> None:
    for name, service in services(prod).items():
        assert names(service.get("secrets", [])) <= set(prod["secrets"]), name
        assert names(service.get("configs", [])) <= set(prod.get("configs", {})), name
        assert set(service.get("networks", [])) <= set(prod["networks"]), name
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in prod["volumes"], (name, source)
        for target in service.get("depends_on", {}):
            assert target in services(prod), (name, target)


def test_every_file_exists_once_the_recipe_has_run(prod: dict[str, Any], made: Path) -> None:
    """Secrets, configs and env files come from the recipe; bind mounts from the repo."""
    files = [spec["file"] for spec in [*prod["secrets"].values(), *prod["configs"].values()]]
    for service in services(prod).values():
        files += [entry["path"] for entry in service.get("env_file", [])]
        assert all(entry.get("required", True) for entry in service.get("env_file", []))
    for path in files:
        assert (made / path).is_file(), f"docs/deploy.md's recipe does not make {path}"
        assert not (ROOT / path).exists() or path == "./alertbridge.toml", path
    for name, service in services(prod).items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (PROD_FILE.parent / source).is_file(), (name, source)
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert {"secrets/", "alertbridge.toml", ".env"} <= set(ignored)


def test_the_recipes_secrets_are_private_and_usable(made: Path) -> None:
    assert (made / "secrets").stat().st_mode & 0o777 == 0o700
    passwords = [
        (made / "secrets" / f"nats_{role}_password").read_text().strip()
        for role in ROLE_OF.values()
    ]
    for password in passwords:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{31,}", password), "nats-server reads it"
    assert len(set(passwords)) == len(passwords), "one password per role"
    assert len((made / "secrets" / "webhook_secrets").read_text().strip()) >= 32
    for env_file in ("ingress.env", "worker.env", "notifier.env"):
        assert (made / "secrets" / env_file).stat().st_mode & 0o777 == 0o600


def test_each_service_mounts_only_its_own_roles_secrets(prod: dict[str, Any]) -> None:
    for name, service in services(prod).items():
        assert names(service.get("secrets", [])) == SECRETS_OF.get(name, set()), name


def test_no_password_is_in_any_environment(prod: dict[str, Any]) -> None:
    """Secrets are files: `docker inspect` shows only where they are."""
    for name in services(prod):
        env = resolved(prod, name)
        assert PREFIX + "NATS_PASSWORD" not in env and PREFIX + "SECRETS" not in env, name
        assert not any(CONF_PASSWORD.fullmatch("$" + var) for var in env), name
        for var, value in env.items():
            if var.endswith("_FILE"):
                secret = value.removeprefix(SECRETS_DIR)
                assert value.startswith(SECRETS_DIR) and secret in SECRETS_OF[name], (name, var)


@pytest.mark.parametrize("service", sorted(ROLE_OF))
def test_each_process_is_its_roles_nats_user(prod: dict[str, Any], service: str) -> None:
    role = ROLE_OF[service]
    env = resolved(prod, service)
    assert env[PREFIX + "NATS_USER"] == role
    assert env[PREFIX + "NATS_PASSWORD_FILE"] == f"{SECRETS_DIR}nats_{role}_password"
    assert env.get(PREFIX + "NATS_JS_API", "$JS.API") == nats_js_api(role)
    if service in SETTINGS_OF:
        settings = load(SETTINGS_OF[service], with_files(env, made_files()))
        assert settings.nats_user == role and settings.nats_js_api == nats_js_api(role)


def test_the_nats_entrypoint_exports_every_password_the_config_reads(
    prod: dict[str, Any],
) -> None:
    nats = services(prod)["nats"]
    script = str(nats["entrypoint"][2]).replace("$$", "$")
    exported = {m["var"]: m["file"] for m in EXPORT.finditer(script)}
    wanted = set(CONF_PASSWORD.findall(nats_config_file().read_text(encoding="utf-8")))
    assert wanted <= set(exported), sorted(wanted - set(exported))
    mounted = names(nats["secrets"])
    assert {path.removeprefix(SECRETS_DIR) for path in exported.values()} == mounted
    assert script.rstrip().endswith('exec nats-server "$@"')


def test_the_images_commands_exist(prod: dict[str, Any]) -> None:
    for name, service in services(prod).items():
        if "build" not in service:
            continue
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]) == DOCKERFILE
        command = [str(arg) for arg in service["command"]]
        if command[0] == "alertbridge":
            continue
        module = _python_module(command)
        assert _module_main_exists(module), f"{name}: no {module}/__main__.py"
    grace = _seconds(str(services(prod)["worker"]["stop_grace_period"]))
    assert grace > WorkerSettings().shutdown_grace


def test_the_worker_starts_after_provisioning(prod: dict[str, Any]) -> None:
    for name in ("worker", "notifier"):
        assert services(prod)[name]["depends_on"]["provision"]["condition"] == (
            "service_completed_successfully"
        )
    assert services(prod)["ingress"]["depends_on"]["worker"]["condition"] == "service_healthy"
    assert services(prod)["caddy"]["depends_on"]["ingress"]["condition"] == "service_healthy"


# --- run for real ----------------------------------------------------------------


def start_nats(
    prod: dict[str, Any], secrets: Path, store: Path
) -> tuple[Awaitable[asyncio.subprocess.Process], int, int]:
    """The `nats` service's entrypoint script and flags, as Compose runs them, with the
    secret files from `secrets` for /run/secrets; returns (start, client port, monitor)."""
    nats = services(prod)["nats"]
    script = str(nats["entrypoint"][2]).replace("$$", "$").replace(SECRETS_DIR, f"{secrets}/")
    monitor, port = free_port(), free_port()
    here = {"/etc/nats/nats-server.conf": str(nats_config_file()), "/data": str(store)}
    command = [here.get(str(arg), str(arg)) for arg in nats["command"]]
    command[command.index("-m") + 1] = str(monitor)
    bin_dir = str(Path(nats_server_binary()).parent)
    argv = ["/bin/sh", "-c", script, "nats-server", *command, "-a", "127.0.0.1", "-p", str(port)]
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", **resolved(prod, "nats")}
    assert not any(CONF_PASSWORD.fullmatch("$" + var) for var in env), "only from the files"
    started = asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    return started, port, monitor


async def test_nats_starts_as_compose_starts_it_and_each_role_connects(
    prod: dict[str, Any], made: Path, tmp_path: Path
) -> None:
    """The entrypoint script, the command's flags and the recipe's secret files: the
    server is healthy, provisioning as ops works, and the ingress, the worker and the
    notifier connect with their services' variables and do their work."""
    nats = services(prod)["nats"]
    started, port, monitor = start_nats(prod, made / "secrets", tmp_path)
    proc = await started
    url = f"nats://127.0.0.1:{port}"
    try:
        check = next(a for a in nats["healthcheck"]["test"] if "://" in str(a))
        health = f"http://127.0.0.1:{monitor}{urlsplit(str(check)).path}"
        async with httpx.AsyncClient(timeout=2) as http:

            async def healthy() -> bool | None:
                assert proc.returncode is None, "nats-server exited: a password not read?"
                try:
                    return True if (await http.get(health)).status_code == 200 else None
                except httpx.TransportError:
                    return None

            await eventually(healthy, within=15)  # what `service_healthy` waits for
        envs = {
            s: _as_run_here(with_files(resolved(prod, s), made_files()), url) for s in SETTINGS_OF
        }
        provision = [str(arg) for arg in services(prod)["provision"]["command"]]
        await _roles_after_provisioning(envs, provision, tmp_path)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)


@pytest.mark.parametrize("role", NATS_ROLES)
@pytest.mark.parametrize("fault", ["empty", "missing"])
async def test_an_empty_or_missing_password_file_stops_nats(
    prod: dict[str, Any], made: Path, tmp_path: Path, role: str, fault: str
) -> None:
    """nats-server takes an empty password as the role's password (anyone who sends an
    empty one is that role), so the entrypoint must not start it without every file."""
    secrets = tmp_path / "secrets"
    shutil.copytree(made / "secrets", secrets)
    victim = secrets / f"nats_{role}_password"
    if fault == "empty":
        victim.write_text("\n", encoding="utf-8")
    else:
        victim.unlink()
    started, _, _ = start_nats(prod, secrets, tmp_path / "store")
    proc = await started
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0, "nats-server started without the password"
    assert str(victim) in err.decode(), err.decode()
