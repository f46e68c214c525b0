"""deploy/systemd/ and deploy/Caddyfile, checked by the tools that will read them.

The units: `systemd-analyze verify` (Debian's `systemd`; CI installs it) with no
warning at all, `systemd-analyze security --offline` rating each "OK", the hardening
options each must have, each unit loading only its own role's credentials, and the
settings each gives its process loading as that process loads them. Then the nats
unit's own command runs the real nats-server with the credentials the way systemd
hands them over, and each role connects with exactly its unit's variables.

The Caddyfile: `caddy validate` (Debian's `caddy`; CI installs it), and Caddy itself
run in front of a real ingress: the webhook passes, /metrics, /schema and the health
endpoints do not, and a sender cannot pass itself off as TradingView through it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from console.settings import ConsoleSettings
from ingress.access import TRADINGVIEW_IPS
from ingress.settings import IngressSettings
from notifier.settings import NotifierSettings
from ops.platform.settings import PREFIX, Common, load
from ops.tools.paths import NATS_ROLES, nats_config_file, nats_js_api
from projector.settings import ProjectorSettings
from tests.compose_support import _roles_after_provisioning
from tests.ingress_support import SECRET, alert, serving_ingress, settings, stored
from tests.support import NatsServer, eventually, free_port
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
CADDYFILE = ROOT / "deploy" / "Caddyfile"
INSTALL = "/opt/alertbridge"  # where docs/deploy.md puts the checkout and its .venv
ROLE_OF = {
    "alertbridge-provision.service": "ops",
    "alertbridge-worker.service": "worker",
    "alertbridge-ingress.service": "ingress",
    "alertbridge-notifier.service": "notifier",
    "alertbridge-projector.service": "projector",
    "alertbridge-console.service": "console",
}
SETTINGS_OF: dict[str, type[Common]] = {
    "ops": Common,
    "worker": WorkerSettings,
    "ingress": IngressSettings,
    "notifier": NotifierSettings,
    "projector": ProjectorSettings,
    "console": ConsoleSettings,
}
CREDENTIALS_OF = {
    "alertbridge-nats.service": {f"nats-{role}-password" for role in NATS_ROLES},  # every role's
    **{unit: {f"nats-{role}-password"} for unit, role in ROLE_OF.items()},
    "alertbridge-ingress.service": {"nats-ingress-password", "webhook-secrets"},
    "alertbridge-console.service": {"nats-console-password", "console-token"},
}
HARDENING = {
    "User": "alertbridge",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter": "@system-service",
    "RestrictSUIDSGID": "yes",
    "UMask": "0077",
}
MAX_EXPOSURE = 2.0  # systemd-analyze security: below 2.0 is "OK"
CONF_PASSWORD = re.compile(r"\$(ALERTBRIDGE_NATS_[A-Z]+_PASSWORD)\b")


def unit_files() -> list[Path]:
    return sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".target"))


def options(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, continuation lines joined, in order."""
    found: list[tuple[str, str, str]] = []
    section, pending = "", ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def values(path: Path, key: str) -> list[str]:
    return [value for _, k, value in options(path) if k == key]


def environment(path: Path, specifiers: dict[str, str]) -> dict[str, str]:
    """The unit's Environment= settings, with systemd's specifiers (%d, %S) replaced."""
    env: dict[str, str] = {}
    for value in values(path, "Environment"):
        for assignment in shlex.split(value):
            name, _, setting = assignment.partition("=")
            for specifier, replacement in specifiers.items():
                setting = setting.replace(specifier, replacement)
            env[name] = setting
    return env


def credentials(path: Path) -> dict[str, str]:
    """LoadCredential= name → the file systemd reads it from."""
    return dict(value.split(":", 1) for value in values(path, "LoadCredential"))


def installed_here(tmp_path: Path) -> Path:
    """The units as installed on a machine whose /opt/alertbridge is this checkout."""
    target = tmp_path / "units"
    target.mkdir()
    for path in unit_files():
        text = path.read_text(encoding="utf-8").replace(INSTALL, str(ROOT))
        (target / path.name).write_text(text, encoding="utf-8")
    return target


def tool(name: str) -> str:
    """A Debian tool the deploy checks need: CI installs it (.ci/run); never skipped."""
    found = shutil.which(name)
    assert found, f"{name} is not installed: apt-get install {name} (.ci/run does)"
    return found


# --- systemd -----------------------------------------------------------------------


def test_the_units_pass_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    units = sorted(installed_here(tmp_path).iterdir())
    assert {p.name for p in units} == {*CREDENTIALS_OF, "alertbridge.target"}
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", *map(str, units)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == "", "systemd warns: " + done.stdout + done.stderr


def test_verify_catches_what_is_wrong(tmp_path: Path) -> None:
    """The check has teeth: a bad value is only a warning to systemd (exit 0), so the
    test reads the output; a missing program fails outright."""
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nProtectSystem=bogus\n", encoding="utf-8")
    done = subprocess.run([tool("systemd-analyze"), "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert "protect system value" in done.stderr.lower()
    unit.write_text("[Service]\nExecStart=/opt/alertbridge/.venv/bin/python\n", encoding="utf-8")
    done = subprocess.run([tool("systemd-analyze"), "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0 and "is not executable" in done.stderr


@pytest.mark.parametrize("unit", sorted(CREDENTIALS_OF))
def test_each_unit_is_hardened(unit: str, tmp_path: Path) -> None:
    path = UNITS / unit
    found = {key: value for section, key, value in options(path) if section == "Service"}
    for key, wanted in HARDENING.items():
        assert found.get(key) == wanted, f"{unit}: {key}={found.get(key)!r}, want {wanted!r}"
    done = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", "--no-pager",
         str(installed_here(tmp_path) / unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    score = re.search(r"Overall exposure level for \S+: (?P<score>[0-9.]+)", done.stdout)
    assert score is not None, done.stdout + done.stderr
    assert float(score["score"]) < MAX_EXPOSURE, done.stdout


@pytest.mark.parametrize("unit", sorted(CREDENTIALS_OF))
def test_each_unit_loads_only_its_roles_credentials(unit: str) -> None:
    loaded = credentials(UNITS / unit)
    assert set(loaded) == CREDENTIALS_OF[unit]
    for name, source in loaded.items():
        assert source == f"/etc/alertbridge/credentials/{name}", "root's folder, not the user's"
    env = environment(UNITS / unit, {})
    secret = [n for n in env if n.endswith(("PASSWORD", "SECRETS", "HMAC_SECRETS"))]
    assert not secret, f"{unit}: passwords are credentials (files), not Environment="


@pytest.mark.parametrize("unit", sorted(ROLE_OF))
def test_each_process_gets_settings_it_loads_as_its_role(unit: str, tmp_path: Path) -> None:
    role = ROLE_OF[unit]
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in credentials(UNITS / unit):
        (creds / name).write_text(f"n{name.replace('-', '_')}_0123456789\n", encoding="utf-8")
    env = environment(UNITS / unit, {"%d": str(creds), "%S": str(tmp_path)})
    assert env[PREFIX + "NATS_USER"] == role
    assert env[PREFIX + "NATS_PASSWORD_FILE"] == str(creds / f"nats-{role}-password")
    settings = load(SETTINGS_OF[role], env)
    assert settings.nats_js_api == nats_js_api(role)
    assert settings.nats_url == ("nats://127.0.0.1:4222",)
    if role == "ingress":
        assert isinstance(settings, IngressSettings)
        assert settings.http_host == "127.0.0.1", "Caddy is the only public listener"
        assert {str(n) for n in settings.proxies} == {"127.0.0.1/32", "::1/128"}
        assert settings.allowed is not None
        assert {str(n.network_address) for n in settings.allowed} == set(TRADINGVIEW_IPS)
        assert [s.reveal() for s in settings.secrets] == ["nwebhook_secrets_0123456789"]
    if role == "worker":
        assert isinstance(settings, WorkerSettings)
        assert settings.health_host == "127.0.0.1"
        assert Path(settings.paper_db).parent == tmp_path / "alertbridge" / "worker"
    if role == "console":  # it can halt trading: the loopback only; the views read-only
        assert isinstance(settings, ConsoleSettings)
        assert settings.console_host == "127.0.0.1", "never public: an SSH tunnel reaches it"
        projector = environment(UNITS / "alertbridge-projector.service", {"%S": str(tmp_path)})
        assert settings.projections_db == projector[PREFIX + "PROJECTIONS_DB"]
        assert values(UNITS / unit, "ReadOnlyPaths") == ["%S/alertbridge/projector"]
        assert not values(UNITS / unit, "StateDirectory") + values(UNITS / unit, "ReadWritePaths")
        assert settings.console_token_file == str(creds / "console-token")
    stops = values(UNITS / unit, "TimeoutStopSec")
    if role == "worker":
        assert float(stops[0].rstrip("s")) > WorkerSettings().shutdown_grace


def test_the_nats_unit_exports_every_password_the_config_reads() -> None:
    command = " ".join(values(UNITS / "alertbridge-nats.service", "ExecStart"))
    exported = set(re.findall(r"secret (\w+) %d/", command))
    wanted = set(CONF_PASSWORD.findall(nats_config_file().read_text(encoding="utf-8")))
    assert wanted <= exported, sorted(wanted - exported)
    assert "-a 127.0.0.1" in command, "clients and monitoring on the loopback only"


def nats_credentials(tmp_path: Path) -> Path:
    """Every credential the units load, as %d holds them (one password per role)."""
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    for name in CREDENTIALS_OF["alertbridge-nats.service"] | {"webhook-secrets"}:
        (creds / name).write_text(f"n{name.replace('-', '_')}_{os.urandom(8).hex()}\n")
    return creds


async def start_nats_unit(
    tmp_path: Path, specifiers: dict[str, str]
) -> tuple[asyncio.subprocess.Process, int, int]:
    """The nats unit's ExecStart as systemd would run it, on free ports; returns the
    process, the client port and the monitoring port."""
    nats_unit = installed_here(tmp_path) / "alertbridge-nats.service"
    command = values(nats_unit, "ExecStart")[0]
    for specifier, replacement in specifiers.items():
        command = command.replace(specifier, replacement)
    port, monitor = free_port(), free_port()
    command = command.replace("-p 4222", f"-p {port}").replace("-m 8222", f"-m {monitor}")
    argv = shlex.split(command.replace("$$", "$"))
    (tmp_path / "alertbridge" / "nats").mkdir(parents=True, exist_ok=True)  # StateDirectory=
    proc = await asyncio.create_subprocess_exec(
        *argv, env={"PATH": "/usr/bin:/bin", **environment(nats_unit, specifiers)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return proc, port, monitor


async def test_the_units_run_nats_and_each_role_connects(tmp_path: Path) -> None:
    """The nats unit's ExecStart as systemd would run it (its credentials in %d, its
    store under %S), on free ports; then provisioning, the ingress, the worker and the
    notifier with their units' variables, each doing its work."""
    creds = nats_credentials(tmp_path)
    specifiers = {"%d": str(creds), "%S": str(tmp_path)}
    proc, port, monitor = await start_nats_unit(tmp_path, specifiers)
    url = f"nats://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as http:

            async def healthy() -> bool | None:
                assert proc.returncode is None, "nats-server exited: a password not read?"
                try:
                    response = await http.get(f"http://127.0.0.1:{monitor}/healthz")
                except httpx.TransportError:
                    return None
                return True if response.status_code == 200 else None

            await eventually(healthy, within=15)
        envs: dict[str, dict[str, str]] = {}
        for unit, role in ROLE_OF.items():
            env = environment(UNITS / unit, specifiers)
            envs[{"ops": "provision"}.get(role, role)] = env | {PREFIX + "NATS_URL": url}
        provision = shlex.split(values(UNITS / "alertbridge-provision.service", "ExecStart")[0])
        await _roles_after_provisioning(envs, ["alertbridge", *provision[1:]], tmp_path)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)


@pytest.mark.parametrize("role", NATS_ROLES)
@pytest.mark.parametrize("fault", ["empty", "missing"])
async def test_an_empty_or_missing_password_stops_the_nats_unit(
    tmp_path: Path, role: str, fault: str
) -> None:
    """nats-server takes an empty password as the role's password (anyone who sends an
    empty one is that role), so the unit must not start it without every credential."""
    creds = nats_credentials(tmp_path)
    victim = creds / f"nats-{role}-password"
    if fault == "empty":
        victim.write_text("\n", encoding="utf-8")
    else:
        victim.unlink()
    proc, _, _ = await start_nats_unit(tmp_path, {"%d": str(creds), "%S": str(tmp_path)})
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0, "nats-server started without the password"
    assert str(victim) in err.decode(), err.decode()


# --- Caddy -------------------------------------------------------------------------


def caddy_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """Caddy's environment: its data under tmp_path, the Caddyfile's variables."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
            "XDG_CONFIG_HOME": str(tmp_path),
            **{PREFIX + name.upper(): value for name, value in settings.items()}}  # fmt: skip


def test_the_caddyfile_validates_for_a_domain(tmp_path: Path) -> None:
    env = caddy_env(tmp_path, domain="alerts.example.com")
    validate = [tool("caddy"), "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    done = subprocess.run(validate, env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0 and "Valid configuration" in done.stdout + done.stderr, done
    adapt = [tool("caddy"), "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    done = subprocess.run(adapt, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert '"alerts.example.com"' in done.stdout and '"127.0.0.1:8080"' in done.stdout
    assert '"warn"' not in done.stderr, done.stderr
    # Without the domain there is no site: Caddy refuses rather than serving nothing.
    done = subprocess.run(adapt, env=caddy_env(tmp_path), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0


async def caddy_in_front(tmp_path: Path, upstream: str) -> tuple[asyncio.subprocess.Process, str]:
    """Caddy on a free port with the repository's Caddyfile (plain HTTP: no certificate
    to get in a test), its admin endpoint off; returns the process and its URL."""
    port = free_port()
    wrapper = tmp_path / "Caddyfile"
    wrapper.write_text(f"{{\n\tadmin off\n}}\nimport {CADDYFILE}\n", encoding="utf-8")
    env = caddy_env(tmp_path, domain=f"http://127.0.0.1:{port}", upstream=upstream)
    proc = await asyncio.create_subprocess_exec(
        tool("caddy"), "run", "--config", str(wrapper), "--adapter", "caddyfile", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=2) as http:

        async def listening() -> bool | None:
            assert proc.returncode is None, "caddy exited"
            try:
                await http.get(url)
            except httpx.TransportError:
                return None
            return True

        await eventually(listening, within=15)
    return proc, url


@pytest.mark.parametrize("allowed", ["127.0.0.1", "tradingview"])
async def test_caddy_forwards_the_webhook_only_and_its_own_view_of_the_sender(
    nats_server: NatsServer, nc: Client, tmp_path: Path, allowed: str
) -> None:
    """Behind Caddy, the ingress trusting only Caddy: a sender's own X-Forwarded-For
    naming TradingView does not make it TradingView."""
    config = settings(nats_server.url, trusted_proxies="127.0.0.1", allow_ips=allowed)
    async with serving_ingress(config) as ingress:
        proc, url = await caddy_in_front(tmp_path, ingress.removeprefix("http://"))
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                spoof = {"X-Forwarded-For": TRADINGVIEW_IPS[0]}
                response = await http.post(f"{url}/webhook", content=alert(), headers=spoof)
                path_secret = await http.post(
                    f"{url}/webhook/{SECRET}", content=alert(secret=None, id="by-path")
                )
                private = {p: (await http.get(f"{url}{p}")).status_code for p in (
                    "/metrics", "/schema/openapi.json", "/healthz", "/readyz", "/webhookx", "/",
                )}  # fmt: skip
                direct = (await http.get(f"{ingress}/metrics")).status_code
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
    assert set(private.values()) == {404}, private
    assert direct == 200, "the ingress serves /metrics; Caddy does not forward it"
    if allowed == "tradingview":
        assert response.status_code == path_secret.status_code == 403, response.text
        assert await stored(nc) == 0
    else:
        assert response.status_code == path_secret.status_code == 200, response.text
        assert await stored(nc) == 2
