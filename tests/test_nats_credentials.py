"""NATS credentials and transport, on a real nats-server running deploy/nats-server.conf:
a password from a file or a variable, an nkey seed, a wrong or missing credential
refused fast and named (never shown), the passwords `just up` generates (one per role,
each process only its own), and TLS with a CA made here (with and without the client
certificate). What each role may do is tests/test_nats_security.py."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest
from nats.js.client import JetStreamContext

from contracts.subjects import ALERTS_STREAM
from ingress.publisher import Publisher
from ingress.settings import IngressSettings
from ingress.telemetry import IngressMetrics
from ops.platform import provision
from ops.platform.natsconn import NatsAuthError, connect, jetstream
from ops.platform.settings import Common, SettingsError, load
from ops.tools.paths import (
    NATS_ROLES,
    ensure_nats_passwords,
    nats_config_file,
    nats_password_file,
    nats_server_password_var,
    new_nats_password,
)
from ops.tools.stack import Stack
from tests.pki import Pki, make_pki
from tests.secured import (
    TOPOLOGY,
    Secured,
    publish_alert,
    role_passwords,
    run_cli,
    server_env,
)
from tests.support import NatsServer, eventually
from tests.workers import make_alert
from worker.settings import WorkerSettings

# --- credentials --------------------------------------------------------------------


async def test_a_password_file_and_a_password_variable_both_work(
    secured: Secured, as_ops: JetStreamContext, tmp_path: Path
) -> None:
    """Either way the worker logs in and reads the stream (`as_ops` provisions it)."""
    path = tmp_path / "worker.password"
    path.write_text(f"\n{secured.passwords['worker']}\n", encoding="utf-8")
    from_file = {**secured.env("worker"), "ALERTBRIDGE_NATS_PASSWORD": ""}
    from_file["ALERTBRIDGE_NATS_PASSWORD_FILE"] = str(path)
    for env in (from_file, secured.env("worker")):
        client = await connect(load(Common, env), name="alertbridge-worker")
        try:
            assert client.is_connected
            js = jetstream(client, load(Common, env))
            assert await js.find_stream_name_by_subject("alerts.in.a.b") == ALERTS_STREAM
        finally:
            await client.close()


async def test_a_wrong_password_fails_fast_and_says_why(secured: Secured) -> None:
    wrong = "not-the-password"
    # Not retried for ever (connect's own reconnects never end): the refusal comes with
    # the server's first answer, so 30 s turns a retry loop into a TimeoutError, not
    # the NatsAuthError asked for, long before the suite's timeout, on any load.
    with pytest.raises(NatsAuthError) as refused:
        async with asyncio.timeout(30):
            await connect(
                load(Common, secured.env("worker", ALERTBRIDGE_NATS_PASSWORD=wrong)),
                name="alertbridge-worker",
            )
    message = str(refused.value)
    assert "Authorization Violation" in message
    assert "'worker'" in message and "ALERTBRIDGE_NATS_PASSWORD" in message
    assert wrong not in message
    assert secured.server.url in message


async def test_a_refused_ingress_stays_unready_and_says_why(secured: Secured) -> None:
    env = secured.env("ingress", ALERTBRIDGE_NATS_PASSWORD="wrong", ALERTBRIDGE_SECRETS="s" * 16)
    publisher = Publisher(load(IngressSettings, env), IngressMetrics())
    await publisher.start()
    try:

        async def reason() -> list[str] | None:
            found = await publisher.ready()
            return found if found != ["nats: not connected"] else None

        assert "Authorization Violation" in " ".join(await eventually(reason, within=5))
    finally:
        await publisher.stop()


async def test_no_credentials_are_refused(secured: Secured) -> None:
    with pytest.raises(NatsAuthError, match="anonymous"):
        await connect(load(Common, {"ALERTBRIDGE_NATS_URL": secured.server.url}), name="x")


def test_the_cli_reports_a_wrong_password(secured: Secured, tmp_path: Path) -> None:
    env = {**secured.env("ops", ALERTBRIDGE_NATS_PASSWORD="wrong-password")}
    env["ALERTBRIDGE_VAR"] = str(tmp_path)
    result = run_cli(env, "status")
    assert result.returncode == 1
    assert "Authorization Violation" in result.stderr and "'ops'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"ALERTBRIDGE_NATS_USER": "w"}, "ALERTBRIDGE_NATS_PASSWORD_FILE"),
        ({"ALERTBRIDGE_NATS_PASSWORD": "p"}, "ALERTBRIDGE_NATS_USER"),
        (
            {"ALERTBRIDGE_NATS_USER": "w", "ALERTBRIDGE_NATS_PASSWORD": "p",
             "ALERTBRIDGE_NATS_PASSWORD_FILE": "/x"},
            "both set",
        ),
        ({"ALERTBRIDGE_NATS_USER": "w", "ALERTBRIDGE_NATS_PASSWORD_FILE": "/nope"}, "/nope"),
        ({"ALERTBRIDGE_NATS_CREDS": "/nope.creds"}, "ALERTBRIDGE_NATS_CREDS='/nope.creds'"),
        ({"ALERTBRIDGE_NATS_NKEY": "/nope.nk"}, "ALERTBRIDGE_NATS_NKEY='/nope.nk'"),
        ({"ALERTBRIDGE_NATS_TLS_CA": "/nope.pem"}, "ALERTBRIDGE_NATS_TLS_CA"),
        ({"ALERTBRIDGE_NATS_TLS_KEY": "/k.pem"}, "ALERTBRIDGE_NATS_TLS_CERT"),
    ],
)  # fmt: skip
def test_bad_credential_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(names)):
        load(Common, env)


def test_the_password_never_shows(tmp_path: Path) -> None:
    settings = load(
        Common, {"ALERTBRIDGE_NATS_USER": "w", "ALERTBRIDGE_NATS_PASSWORD": "hunter2-xyz"}
    )
    assert "hunter2-xyz" not in repr(settings) and "hunter2-xyz" not in str(settings)
    assert settings.nats_password is not None and settings.nats_password.reveal() == "hunter2-xyz"


async def test_an_nkey_seed_file_logs_in_and_another_key_is_refused(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    config = tmp_path / "nkey.conf"
    config.write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    good, bad = tmp_path / "user.nk", tmp_path / "other.nk"
    good.write_bytes(seed + b"\n")
    bad.write_bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))
    server = NatsServer(tmp_path / "store", config=config).start()
    try:
        settings = load(Common, {"ALERTBRIDGE_NATS_URL": server.url,
                                 "ALERTBRIDGE_NATS_NKEY": str(good)})  # fmt: skip
        client = await connect(settings, name="nkey-user")
        try:
            assert client.is_connected
            await client.publish("hello", b"x")
            await client.flush()
        finally:
            await client.close()
        wrong = load(Common, {"ALERTBRIDGE_NATS_URL": server.url,
                              "ALERTBRIDGE_NATS_NKEY": str(bad)})  # fmt: skip
        with pytest.raises(NatsAuthError, match="Authorization Violation"):
            await asyncio.wait_for(connect(wrong, name="nkey-stranger"), 20)
    finally:
        server.stop()


# --- `just up`: each process only its own user ---------------------------------------


@pytest.mark.parametrize("unparsable", ["123456", "-abcdef", "9-8xyz", "true", "10m", ""])
def test_a_password_nats_server_would_misread_is_replaced(tmp_path: Path, unparsable: str) -> None:
    """nats-server parses a `$VAR` value as config: these stopped it from starting (seen:
    1 in ~20 starts with token_urlsafe passwords, which can begin with `-`)."""
    var = tmp_path / "var"
    var.mkdir()
    bad = nats_password_file(var, "ingress")
    bad.write_text(unparsable + "\n")
    good = nats_password_file(var, "worker")
    good.write_text("kept0123456789abcdef\n")
    ensure_nats_passwords(var)
    replaced = bad.read_text().strip()
    assert replaced != unparsable and replaced.startswith("n") and len(replaced) == 49
    assert bad.stat().st_mode & 0o777 == 0o600
    assert good.read_text() == "kept0123456789abcdef\n"


def test_generated_passwords_start_a_real_server(tmp_path: Path) -> None:
    passwords = {role: new_nats_password() for role in NATS_ROLES}
    server = NatsServer(tmp_path / "store", config=nats_config_file(), env=server_env(passwords))
    try:
        server.start()
    finally:
        server.stop()


def test_just_up_gives_each_process_its_own_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for role in NATS_ROLES:  # even when the caller has them, children never see them
        monkeypatch.setenv(nats_server_password_var(role), "leaked")
    monkeypatch.setenv("ALERTBRIDGE_NATS_PASSWORD", "inherited")
    var = tmp_path / "var"
    files = ensure_nats_passwords(var)
    assert {p.stat().st_mode & 0o777 for p in files.values()} == {0o600}
    assert set(files) == set(NATS_ROLES)
    assert len({p.read_text() for p in files.values()}) == len(NATS_ROLES), "one per role"
    assert ensure_nats_passwords(var) == files
    assert {p.read_text() for p in ensure_nats_passwords(var).values()} == {
        p.read_text() for p in files.values()
    }  # kept, not regenerated
    stack = Stack(var=var)
    for role in NATS_ROLES:
        env = stack.env_as(role)
        assert env["ALERTBRIDGE_NATS_USER"] == role
        assert env["ALERTBRIDGE_NATS_PASSWORD_FILE"] == str(files[role])
        assert env["ALERTBRIDGE_NATS_PASSWORD"] == ""
        assert not any(nats_server_password_var(r) in env for r in NATS_ROLES)
        assert load(Common, env).nats_user == role


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Secured, Pki]]:
    """deploy/nats-server.conf with its `tls {}` block filled in, `verify: true`."""
    root = tmp_path_factory.mktemp("nats-tls")
    pki = make_pki(root)
    config = root / "nats-server.conf"
    config.write_text(
        nats_config_file().read_text(encoding="utf-8")
        + f"""
tls {{
  cert_file: "{pki.server[0]}"
  key_file: "{pki.server[1]}"
  ca_file: "{pki.ca}"
  verify: true
  timeout: 2
}}
""",
        encoding="utf-8",
    )
    passwords = role_passwords()
    server = NatsServer(root / "store", config=config, env=server_env(passwords), log=root / "log")
    yield Secured(server.start(), passwords), pki
    server.stop()


def _tls_env(
    secured: Secured, role: str, pki: Pki, *, ca: bool = True, cert: bool = True
) -> dict[str, str]:
    env = secured.env(role, ALERTBRIDGE_NATS_URL=f"tls://127.0.0.1:{secured.server.port}")
    if ca:
        env["ALERTBRIDGE_NATS_TLS_CA"] = str(pki.ca)
    if cert:
        env["ALERTBRIDGE_NATS_TLS_CERT"] = str(pki.client[0])
        env["ALERTBRIDGE_NATS_TLS_KEY"] = str(pki.client[1])
    return env


async def test_tls_with_the_ca_and_a_client_certificate(tls_server: tuple[Secured, Pki]) -> None:
    secured, pki = tls_server
    worker = await connect(
        load(WorkerSettings, _tls_env(secured, "worker", pki)), name="alertbridge-worker"
    )
    ingress = await connect(
        load(Common, _tls_env(secured, "ingress", pki)), name="alertbridge-ingress"
    )
    try:
        assert worker.connected_url is not None and worker.connected_url.scheme == "tls"
        ops = await connect(load(Common, _tls_env(secured, "ops", pki)), name="alertbridge-ops")
        try:
            await provision.apply(ops.jetstream(), load(WorkerSettings, TOPOLOGY).topology())
        finally:
            await ops.close()
        seq = await publish_alert(secured.js("ingress", ingress), make_alert("over-tls"))
        assert await secured.js("worker", worker).find_stream_name_by_subject("events.x") == (
            "EVENTS"
        )
        assert seq >= 1
    finally:
        await ingress.close()
        await worker.close()


@pytest.mark.parametrize(
    ("ca", "cert", "why"),
    [
        (False, True, "certificate does not verify"),  # we do not trust the server
        (True, False, "TLS to NATS"),  # the server does not trust us (verify: true)
    ],
)
async def test_tls_without_the_ca_or_a_client_certificate_fails(
    tls_server: tuple[Secured, Pki], ca: bool, cert: bool, why: str
) -> None:
    secured, pki = tls_server
    settings = load(Common, _tls_env(secured, "ingress", pki, ca=ca, cert=cert))
    with pytest.raises(NatsAuthError, match=why):
        await asyncio.wait_for(connect(settings, name="alertbridge-ingress"), 5)
