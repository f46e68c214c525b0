"""What the compose.yaml and Dockerfile tests share (tests/test_compose*.py): the files as
Compose and Docker read them, the settings and roles they must agree with, and the
fixtures `compose` and `compose_schema`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from console.settings import ConsoleSettings
from contracts.messages import alert_encoder, event_encoder
from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM
from contracts.topology import NOTIFIER, PROJECTOR
from ingress.publisher import INGRESS_STREAMS
from ingress.settings import IngressSettings
from notifier.settings import NotifierSettings
from ops.platform import provision
from ops.platform.accounts import CONFIG_VAR
from ops.platform.natsconn import connect, jetstream
from ops.platform.settings import PREFIX, Common, load
from ops.tools.paths import NATS_ROLES, nats_server_password_var
from ops.tools.stack import Stack
from projector.rebuild import read_range
from projector.settings import ProjectorSettings
from tests.notifier_support import Publisher, expired
from tests.secured import publish_alert
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


def read_compose(path: Path) -> dict[str, Any]:
    """A compose file as Compose reads it (YAML merge keys resolved, not interpolated)."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml."""
    return read_compose(COMPOSE_FILE)


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


def _volume_paths(arguments: str) -> list[str]:
    if arguments.startswith("["):
        return _exec_form(arguments)
    return arguments.split()


def _as_run_here(env: dict[str, str], url: str) -> dict[str, str]:
    """A service's environment with the server's address on this host for `nats:4222`."""
    assert env[PREFIX + "NATS_URL"] == "nats://nats:4222"
    return env | {PREFIX + "NATS_URL": url}


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
