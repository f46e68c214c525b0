"""The CLI's rough edges, each made to happen: --version and -h, NATS out of reach,
`dlq purge` asking first, `dlq replay --dry-run`, `config check` naming every error,
prices shown unrounded, `send` following `up --port`, and nats-server holding bcrypt
hashes of the stack's passwords (no plaintext warning; a hash is no password)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError

from contracts.subjects import ALERTS_STREAM, alert_subject
from ops.platform.natsconn import NatsUnreachableError, connect
from ops.platform.settings import Common, load
from ops.tools import dlq
from ops.tools.cli_views import _num
from tests.support import NatsServer, free_port, free_stack_port
from tests.upstack import Up, start
from tests.workers import make_alert
from worker.dlq import DeadLetters

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")


def cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ALERTBRIDGE, *args], env={**os.environ, **env}, input=stdin, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip


def test_version_and_short_help() -> None:
    shown = cli("--version", env={})
    assert (
        shown.returncode == 0 and shown.stdout == f"alertbridge, version {version('alertbridge')}\n"
    )
    for args in (("-h",), ("dlq", "purge", "-h"), ("send", "-h")):
        helped = cli(*args, env={})
        assert helped.returncode == 0 and helped.stdout.startswith("Usage: alertbridge"), args
    assert "--yes" in cli("dlq", "purge", "-h", env={}).stdout


def test_prices_are_shown_as_sent() -> None:
    assert [_num(v) for v in (21034.25, 0.015, 3.0, 67432.524, None)] == [
        "21034.25", "0.015", "3", "67432.524", "",
    ]  # fmt: skip


# --- NATS out of reach ------------------------------------------------------------------


def test_a_command_without_nats_says_so_in_plain_words(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # nobody listens there
    began = time.monotonic()
    done = cli("dlq", "ls", env={"ALERTBRIDGE_NATS_URL": url, "ALERTBRIDGE_VAR": str(tmp_path)})
    took = time.monotonic() - began
    assert done.returncode == 1
    assert done.stderr == f"Error: cannot reach NATS at {url} — is the stack running? `just up`\n"
    assert took < 8  # it used to wait 10 s after ten warnings; generous for a loaded box


async def test_only_the_commands_fail_fast_the_processes_keep_waiting(tmp_path: Path) -> None:
    port = free_port()
    settings = load(Common, {"ALERTBRIDGE_NATS_URL": f"nats://127.0.0.1:{port}"})
    with pytest.raises(NatsUnreachableError, match="is the stack running"):
        await connect(settings, name="cli", fail_fast=True)
    waiting = asyncio.create_task(connect(settings, name="worker"))
    await asyncio.sleep(2.5)  # longer than a command waits: the process still tries
    assert not waiting.done()
    server = NatsServer(tmp_path / "store", port=port).start()
    try:
        nc = await asyncio.wait_for(waiting, 30)  # and connects once the server is there
        await nc.close()
    finally:
        server.stop()


# --- dlq purge and replay --dry-run -----------------------------------------------------


async def _dead(nc: Client, alert_id: str) -> int:
    js = nc.jetstream()
    alert = make_alert(alert_id)
    subject = alert_subject(alert.account, alert.symbol)
    data = msgspec.json.encode(alert)
    ack = await js.publish(subject, data)
    seq, _ = await DeadLetters(js).write(
        data=data, original_headers=None, subject=subject, seq=ack.seq,
        reason="terminated: no such symbol", deliveries=2, last_error="TerminalError: x",
    )  # fmt: skip
    return seq


def _env(server: NatsServer, tmp_path: Path) -> dict[str, str]:
    return {"ALERTBRIDGE_NATS_URL": server.url, "ALERTBRIDGE_VAR": str(tmp_path)}


async def test_purge_asks_first_and_says_what_it_did_as_json(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    env = _env(nats_server, tmp_path)
    seq = await _dead(nc, "to-purge")
    declined = await asyncio.to_thread(cli, "dlq", "purge", str(seq), env=env, stdin="n\n")
    assert declined.returncode == 1 and "for good?" in declined.stderr
    assert [e.dlq_seq for e in await dlq.entries(nc.jetstream())] == [seq]
    closed = await asyncio.to_thread(cli, "dlq", "purge", str(seq), env=env)  # no one to ask
    assert closed.returncode == 1 and len(await dlq.entries(nc.jetstream())) == 1
    done = await asyncio.to_thread(cli, "dlq", "purge", "--yes", "--json", str(seq), "999", env=env)
    assert done.returncode == 1  # 999 was not there
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"dlq_seq": seq, "purged": True},
        {"dlq_seq": 999, "purged": False, "error": "no DLQ entry 999"},
    ]
    assert await dlq.entries(nc.jetstream()) == []
    agreed_seq = await _dead(nc, "agreed")
    agreed = await asyncio.to_thread(cli, "dlq", "purge", str(agreed_seq), env=env, stdin="y\n")
    assert agreed.returncode == 0 and agreed.stdout == "purged 1 entry\n"
    assert await dlq.entries(nc.jetstream()) == []


async def test_replay_dry_run_changes_nothing(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    env = _env(nats_server, tmp_path)
    js = nc.jetstream()
    first, second = await _dead(nc, "dry-1"), await _dead(nc, "dry-2")
    alerts_before = (await js.stream_info(ALERTS_STREAM)).state.messages
    one = await asyncio.to_thread(cli, "dlq", "replay", "--dry-run", str(first), env=env)
    assert one.returncode == 0
    assert one.stdout == f"would replay DLQ {first}: alert dry-1 (terminated: no such symbol)\n"
    every = await asyncio.to_thread(cli, "dlq", "replay", "--dry-run", "--all", "--json", env=env)
    assert [json.loads(x)["alert_id"] for x in every.stdout.splitlines()] == ["dry-1", "dry-2"]
    missing = await asyncio.to_thread(cli, "dlq", "replay", "--dry-run", "999", env=env)
    assert missing.returncode == 1 and "no DLQ entry 999" in missing.stderr
    assert [e.dlq_seq for e in await dlq.entries(js)] == [first, second]
    assert (await js.stream_info(ALERTS_STREAM)).state.messages == alerts_before


# --- config check -----------------------------------------------------------------------


def test_config_check_names_every_error(tmp_path: Path) -> None:
    config = tmp_path / "alertbridge.toml"
    config.write_text(
        "[accounts.a]\nbroker = 'nosuch'\n\n"
        "[accounts.b]\nbroker = 'ccxt'\n\n"
        "[accounts.c]\nwebhook_secrets_env = ['C_SECRET']\n\n"
        "[accounts.d]\nwebhook_secrets_env = ['D_SECRET']\n"
    )
    env = {"ALERTBRIDGE_CONFIG": str(config), "D_SECRET": "short", "C_SECRET": ""}
    checked = cli("config", "check", env=env)
    assert checked.returncode == 2
    lines = checked.stderr.splitlines()
    assert [line.split("account ")[1].split(":")[0] for line in lines] == [
        "'a'",
        "'b'",
        "'c'",
        "'d'",
    ]
    assert "unknown" in lines[0] and "[ccxt] table" in lines[1]
    assert "C_SECRET, which is not set" in lines[2] and "shorter than" in lines[3]
    fixed = cli("config", "check", env={**env, "C_SECRET": "c" * 16, "D_SECRET": "d" * 16})
    assert fixed.returncode == 2 and len(fixed.stderr.splitlines()) == 2  # a and b still
    config.write_text("[accounts.c]\nwebhook_secrets_env = ['C_SECRET']\n")
    good = cli("config", "check", env={**env, "C_SECRET": "c" * 16})
    assert good.returncode == 0, good.stderr


# --- the local stack: send's port, hashed NATS passwords ------------------------------


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    var = tmp_path_factory.mktemp("edges") / "var"
    stack = start(var, free_stack_port(), free_port(), free_port())
    yield stack
    stack.stop()


def test_send_follows_the_port_up_was_given(up: Up) -> None:
    env = {"ALERTBRIDGE_VAR": str(up.var)}  # no --url: the stack's port is not 8080
    sent = cli("send", "--symbol", "EDGE1", env=env)
    assert sent.returncode == 0 and sent.stdout.startswith("200 "), sent.stderr
    elsewhere = f"http://127.0.0.1:{free_port()}/webhook"
    refused = cli("send", env={**env, "ALERTBRIDGE_WEBHOOK_URL": elsewhere})
    assert refused.returncode == 1 and f"cannot reach the ingress at {elsewhere}" in refused.stderr


def _nats_server_environ(up: Up) -> dict[str, str]:
    store = str(up.var / "nats")
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"--store_dir" in argv and store.encode() in argv:
                pairs = (proc / "environ").read_bytes().split(b"\0")
                return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)
        except OSError:
            continue
    raise AssertionError("the stack's nats-server was not found")


async def test_nats_server_holds_hashes_and_says_nothing_of_plaintext(up: Up) -> None:
    assert "Plaintext passwords detected" not in up.log.read_text()
    assert "Server is ready" in up.log.read_text()  # the server's own log is in there
    hashed = _nats_server_environ(up)["ALERTBRIDGE_NATS_OPS_PASSWORD"]
    password = (up.var / "nats-ops.password").read_text().strip()
    assert hashed.startswith("$2a$") and password not in hashed
    url = f"nats://127.0.0.1:{up.nats}"
    client = await nats.connect(url, user="ops", password=password, allow_reconnect=False)
    await client.close()
    # The attacker who read the server's environment: the hash does not log in.
    attacker = Client()
    try:
        with pytest.raises(NatsError, match="Authorization Violation"):
            await attacker.connect(
                url, user="ops", password=hashed, allow_reconnect=False, max_reconnect_attempts=1
            )
    finally:
        await attacker.close()  # its socket, not left to the collector
