"""compose.prod.yaml, checked without Docker.

It must be a valid Compose document (the Compose Specification's JSON schema, the
copy `check-jsonschema` vendors, as tests/test_compose.py uses), publish exactly 80
and 443 to the world (Caddy's), and be wired: every secret, config, volume and
network a service names is defined, every file it reads exists once the secrets
recipe of docs/deploy.md has run, each service mounts only its own role's secrets
and holds no password in its environment, and the ingress trusts Caddy's address and
nothing else. Then the `nats` service's entrypoint script is run for real on the
repository's nats-server.conf with the recipe's secret files, and each role connects
with exactly its service's variables.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest

from console.settings import ConsoleSettings, read_token
from ingress.access import TRADINGVIEW, parse_networks
from ingress.settings import IngressSettings
from notifier.settings import NotifierSettings
from ops.platform.settings import PREFIX, Common, load
from ops.tools.paths import NATS_ROLES, nats_config_file, nats_js_api, nats_server_binary
from projector.settings import ProjectorSettings
from tests.compose_support import (
    INTERPOLATION,
    _as_run_here,
    _container_ports,
    _module_main_exists,
    _python_module,
    _roles_after_provisioning,
    _seconds,
    read_compose,
)
from tests.compose_support import _environment as environment
from tests.compose_support import _interpolate as interpolate
from tests.support import eventually, free_port
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
PROD_FILE = ROOT / "compose.prod.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
RECIPE_MARKER = "<!-- compose.prod.yaml: the secrets -->"
SECRETS_DIR = "/run/secrets/"
PUBLIC_PORTS = {80, 443}
# Who each service is to NATS, the secrets it may mount, the settings it loads.
ROLE_OF = {
    "provision": "ops",
    "ingress": "ingress",
    "worker": "worker",
    "notifier": "notifier",
    "projector": "projector",
    "console": "console",
}
SECRETS_OF = {
    "nats": {f"nats_{role}_password" for role in NATS_ROLES},  # the server: every role's
    **{service: {f"nats_{role}_password"} for service, role in ROLE_OF.items()},
    "ingress": {"nats_ingress_password", "webhook_secrets"},
    "console": {"nats_console_password", "console_token"},
}
SETTINGS_OF: dict[str, type[Common]] = {
    "provision": Common,
    "ingress": IngressSettings,
    "worker": WorkerSettings,
    "notifier": NotifierSettings,
    "projector": ProjectorSettings,
    "console": ConsoleSettings,
}
HOST = {PREFIX + "DOMAIN": "alerts.example.com"}
CONF_PASSWORD = re.compile(r"\$(ALERTBRIDGE_NATS_[A-Z]+_PASSWORD)\b")
EXPORT = re.compile(r"^\s*secret (?P<var>\w+) (?P<file>/run/secrets/\w+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def prod() -> dict[str, Any]:
    return read_compose(PROD_FILE)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder after docs/deploy.md's secrets recipe has run in it."""
    folder = tmp_path_factory.mktemp("project")
    subprocess.run(["/bin/sh", "-euc", recipe()], cwd=folder, check=True, timeout=60)
    return folder


def recipe() -> str:
    """The shell block after the marker in docs/deploy.md."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    after = text.split(RECIPE_MARKER, 1)[1]
    match = re.match(r"\s*```sh\n(?P<body>.*?)```", after, re.DOTALL)
    assert match is not None, f"no ```sh block after {RECIPE_MARKER}"
    return match["body"]


def services(prod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = prod["services"]
    assert isinstance(found, dict)
    return found


def resolved(prod: dict[str, Any], service: str, host: dict[str, str] = HOST) -> dict[str, str]:
    env = environment(services(prod)[service])
    return {name: interpolate(value, host) for name, value in env.items()}


def names(entries: list[Any], key: str = "source") -> set[str]:
    """The names in a short- or long-syntax list (`secrets`, `configs`, `networks`)."""
    return {entry if isinstance(entry, str) else entry[key] for entry in entries}


def published(service: dict[str, Any]) -> dict[int, str]:
    """Published port → host address ('' for every interface)."""
    found: dict[int, str] = {}
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        found[int(parts[-2])] = parts[0] if len(parts) == 3 else ""
    return found


# --- the Compose Specification ----------------------------------------------------


def test_the_file_is_valid_against_the_compose_specification(
    prod: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    validator = jsonschema.validators.validator_for(compose_schema)(compose_schema)
    errors = sorted(validator.iter_errors(prod), key=lambda error: error.json_path)
    assert not errors, "\n".join(f"{error.json_path}: {error.message}" for error in errors)


def test_the_services_are_there(prod: dict[str, Any]) -> None:
    assert set(services(prod)) == {"caddy", "nats", "jaeger", *ROLE_OF}


# --- what the world sees ----------------------------------------------------------


def test_the_public_ports_are_exactly_80_and_443_on_caddy(prod: dict[str, Any]) -> None:
    public = {
        (name, port)
        for name, service in services(prod).items()
        for port, host in published(service).items()
        if host in ("", "0.0.0.0", "::")  # noqa: S104 - what "public" means here
    }
    assert public == {("caddy", 80), ("caddy", 443)}
    for name, service in services(prod).items():
        for port, host in published(service).items():
            assert host in ("", "127.0.0.1") and (host or port in PUBLIC_PORTS), (name, port)
    assert _container_ports(services(prod)["caddy"]) == PUBLIC_PORTS


def test_caddy_serves_the_repositorys_caddyfile_for_the_domain(prod: dict[str, Any]) -> None:
    caddy = services(prod)["caddy"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in caddy["volumes"]}
    assert (PROD_FILE.parent / mounts["/etc/caddy/Caddyfile"]).resolve() == (
        ROOT / "deploy" / "Caddyfile"
    )
    assert str(caddy["volumes"][0]).endswith(":ro")
    assert mounts["/data"] in prod["volumes"], "the certificates must outlive the container"
    raw = environment(caddy)[PREFIX + "DOMAIN"]
    match = INTERPOLATION.fullmatch(raw)
    assert match is not None and match["rest"].startswith(":?"), "no default domain"
    ingress = resolved(prod, "ingress")
    assert (
        resolved(prod, "caddy")[PREFIX + "UPSTREAM"] == f"ingress:{ingress[PREFIX + 'HTTP_PORT']}"
    )


def test_the_ingress_trusts_caddy_alone_and_admits_tradingview(prod: dict[str, Any]) -> None:
    caddy_net = services(prod)["caddy"]["networks"]
    assert set(caddy_net) == {"edge"}, "Caddy reaches the ingress only"
    address = ipaddress.ip_address(caddy_net["edge"]["ipv4_address"])
    subnet = ipaddress.ip_network(prod["networks"]["edge"]["ipam"]["config"][0]["subnet"])
    assert address in subnet
    settings = load(IngressSettings, with_files(resolved(prod, "ingress"), made_files()))
    assert settings.proxies == (ipaddress.ip_network(address),)
    assert settings.allowed == parse_networks([TRADINGVIEW])
    on_edge = {n for n, s in services(prod).items() if "edge" in names(s.get("networks", []))}
    assert on_edge == {"caddy", "ingress"}, "nothing else may appear as Caddy's neighbour"


def test_nats_and_the_metrics_are_private(prod: dict[str, Any]) -> None:
    assert prod["networks"]["backend"]["internal"] is True
    for name in ("nats", "provision", "ingress"):
        assert "outbound" not in names(services(prod)[name]["networks"]), name
    assert not services(prod)["nats"].get("ports")
    for name in ("ingress", "worker"):
        assert not services(prod)[name].get("ports"), f"{name}'s /metrics stays private"


def test_the_console_is_on_the_loopback_only_and_caddy_never_routes_it(
    prod: dict[str, Any],
) -> None:
    """It can halt trading and replay alerts: reachable on the server's loopback (an SSH
    tunnel) and the private network only; Caddy neither routes to it nor shares a network
    with it; it reads the projector's views read-only."""
    console = services(prod)["console"]
    env = resolved(prod, "console")
    port = int(env[PREFIX + "CONSOLE_PORT"])
    assert published(console) == {port: "127.0.0.1"}
    assert set(names(console["networks"])) == {"backend", "console"}
    on_console_net = {
        n for n, s in services(prod).items() if "console" in names(s.get("networks", []))
    }
    assert on_console_net == {"console"}
    assert "edge" not in names(console["networks"])
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text(encoding="utf-8")
    assert "console" not in caddyfile and str(port) not in caddyfile
    assert resolved(prod, "caddy")[PREFIX + "UPSTREAM"].startswith("ingress:")
    views = env[PREFIX + "PROJECTIONS_DB"]
    assert views == resolved(prod, "projector")[PREFIX + "PROJECTIONS_DB"]
    store = str(Path(views).parent)
    (mount,) = [str(v) for v in console["volumes"] if str(v).split(":")[1] == store]
    assert mount == f"projections-data:{store}:ro"
    assert console["depends_on"]["projector"]["condition"] == "service_started"


def test_the_console_entrypoint_hands_it_a_private_copy_of_its_token(
    prod: dict[str, Any], tmp_path: Path
) -> None:
    """The token secret is 0444 (as every secret here); the console refuses a token file
    readable by others, so the entrypoint copies it into a 0400 file and runs the command.
    Run here with the paths moved into a temporary folder."""
    console = services(prod)["console"]
    script = str(console["entrypoint"][2]).replace("$$", "$")
    assert "/tmp" in console["tmpfs"], "the copy never touches a disk"  # noqa: S108
    secret = tmp_path / "console_token"
    secret.write_text("a-console-token-long-enough-to-be-used\n", encoding="utf-8")
    secret.chmod(0o444)
    script = script.replace("/run/secrets/console_token", str(secret))
    script = script.replace("/tmp/console.token", str(tmp_path / "copy"))  # noqa: S108
    (tmp_path / "copy").write_text("a stale copy from an earlier start\n", encoding="utf-8")
    (tmp_path / "copy").chmod(0o400)
    probe = (
        "import os; p = os.environ['ALERTBRIDGE_CONSOLE_TOKEN_FILE']; "
        "print(p, oct(os.stat(p).st_mode & 0o777))"
    )
    done = subprocess.run(
        ["/bin/sh", "-c", script, "console", sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert done.stdout.split() == [str(tmp_path / "copy"), "0o400"]
    settings = load(ConsoleSettings, {PREFIX + "CONSOLE_TOKEN_FILE": str(tmp_path / "copy")})
    assert read_token(settings).reveal() == "a-console-token-long-enough-to-be-used"
    assert [str(a) for a in console["command"]] == ["python", "-m", "console"]


def test_jaeger_is_on_demand_and_traces_are_off_without_it(prod: dict[str, Any]) -> None:
    assert services(prod)["jaeger"]["profiles"] == ["tracing"]
    for name in ROLE_OF:
        assert resolved(prod, name).get("OTEL_EXPORTER_OTLP_ENDPOINT", "") == ""
        chosen = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}
        assert resolved(prod, name, HOST | chosen)["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
            "http://jaeger:4318"
        )


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


_made_files: dict[str, Path] = {}


def made_files() -> dict[str, Path]:
    """/run/secrets/<name> → a file with a value like the recipe's (for `load`)."""
    return _made_files


@pytest.fixture(autouse=True, scope="module")
def _secret_files(made: Path) -> None:
    _made_files.update({SECRETS_DIR + p.name: p for p in (made / "secrets").iterdir()})


def with_files(env: dict[str, str], files: dict[str, Path]) -> dict[str, str]:
    """`env` with each /run/secrets/ path replaced by the file it stands for here."""
    return {name: str(files.get(value, value)) for name, value in env.items()}


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
