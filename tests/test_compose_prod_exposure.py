"""compose.prod.yaml, checked without Docker: a valid Compose document (the Compose
Specification's JSON schema, the copy `check-jsonschema` vendors, as tests/test_compose.py
uses), and what the world sees: exactly 80 and 443 published (Caddy's), Caddy serving
the repository's Caddyfile, the ingress trusting Caddy's address and nothing else, NATS
and the metrics private, the console on the loopback only, Jaeger on demand.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema

from console.settings import ConsoleSettings, read_token
from ingress.access import TRADINGVIEW, parse_networks
from ingress.settings import IngressSettings
from ops.platform.settings import PREFIX, load
from tests.compose_prod_support import (
    HOST,
    PROD_FILE,
    PUBLIC_PORTS,
    ROLE_OF,
    ROOT,
    made_files,
    made_fixture,  # noqa: F401 (the `made` fixture)
    names,
    prod_fixture,  # noqa: F401 (the `prod` fixture)
    published,
    resolved,
    secret_files_fixture,  # noqa: F401 (the autouse `_secret_files` fixture)
    services,
    with_files,
)
from tests.compose_support import INTERPOLATION, _container_ports
from tests.compose_support import _environment as environment

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
