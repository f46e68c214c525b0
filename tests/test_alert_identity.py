"""Who an alert is, checked from outside: a body without `id` is one alert only within the
resend window (held in NATS: across ingress processes and a restart), an explicit id
keeps the long window, a signed request's id covers its timestamp, ids are scoped per
account, and no webhook can take a replay's message id. Real nats-server, real HTTP
(uvicorn or `python -m ingress`), orders counted at the broker boundary."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.headers import MSG_ID
from contracts.messages import Alert, Executed, Replayed, alert_decoder, replay_msg_id
from contracts.subjects import ALERTS_PREFIX, ALERTS_STREAM, RESENDS_STREAM, alert_subject
from contracts.topology import partition_durable
from ingress.auth import sign
from ingress.settings import IngressSettings
from ops.platform import provision
from ops.platform.accounts import ingress_accounts
from ops.platform.settings import load
from ops.tools import dlq
from ops.tools.streams import read_all
from tests.ingress_support import (
    SECRET,
    Process,
    ingress_env,
    ingress_process,
    serving_ingress,
    wait_ready,
)
from tests.ingress_support import settings as ingress_settings
from tests.support import NatsServer, eventually, python_module
from tests.workers import FlakyBroker, events_of, make_alert, paper_rows, publish, run_worker
from worker.brokers.base import Order, OrderResult
from worker.brokers.paper import PaperBroker
from worker.dlq import DeadLetters
from worker.errors import TerminalError
from worker.execute import client_order_id
from worker.settings import WorkerSettings

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")
PARTITIONS = 4  # worker_env's and ingress_env's
HMAC_KEY = "k" * 32
Shorten = Callable[[], Awaitable[None]]


def tv(**fields: Any) -> bytes:
    """A TradingView body without `id` (fields override; None drops one)."""
    base: dict[str, Any] = {"secret": SECRET, "ticker": "NASDAQ:AAPL", "action": "buy", "qty": 1}
    return json.dumps({k: v for k, v in {**base, **fields}.items() if v is not None}).encode()


class Counting(FlakyBroker):
    """The paper book behind a boundary that counts `place` calls per client order id and
    refuses (terminally) the first call for each id in `refuse_once`."""

    name = "counting-paper"

    def __init__(self, inner: PaperBroker) -> None:
        super().__init__(inner, failures=0)
        self.placed: Counter[str] = Counter()
        self.refuse_once: set[str] = set()

    async def place(self, order: Order) -> OrderResult:
        self.placed[order.client_order_id] += 1
        if order.client_order_id in self.refuse_once:
            self.refuse_once.discard(order.client_order_id)
            raise TerminalError("refused once by the test's broker")
        return await self.inner.place(order)


class CrashedError(Exception):
    """The operator's process died here."""


class CrashesBeforeDelete(JetStreamContext):
    """A real JetStream context whose DLQ delete never happens: a crash after the
    replay was published (and recorded), before its entry was removed."""

    async def delete_msg(self, stream_name: str, seq: int) -> bool:
        raise CrashedError


@pytest.fixture
def worker_settings(worker_env: dict[str, str]) -> WorkerSettings:
    return load(WorkerSettings, worker_env)


@pytest.fixture
async def paper(worker_settings: WorkerSettings) -> AsyncIterator[PaperBroker]:
    broker = PaperBroker(Path(worker_settings.paper_db))
    yield broker
    await broker.close()


@pytest.fixture
async def broker(nc: Client, paper: PaperBroker, worker_settings: WorkerSettings) -> Counting:
    """A worker running on the counting boundary (stopped with the test)."""
    counting = Counting(paper)
    await run_worker(nc, counting, worker_settings)
    return counting


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
async def url(nats_server: NatsServer, nc: Client) -> AsyncIterator[str]:
    """An ingress (unsigned, global secret) under uvicorn, ready."""
    async with serving_ingress(ingress_settings(nats_server.url)) as base:
        yield base


@pytest.fixture
def shorten(nc: Client, worker_env: dict[str, str]) -> Shorten:
    """Provision as an operator would with ALERTBRIDGE_RESEND_WINDOW=1 (the stream's
    max_age: the window's only source)."""
    short = load(WorkerSettings, {**worker_env, "ALERTBRIDGE_RESEND_WINDOW": "1"})
    return lambda: provision.apply(nc.jetstream(), short.topology())


async def post(
    http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """POST a webhook that must be accepted; its answer."""
    response = await http.post(f"{url}/webhook", content=body, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def window_over(js: JetStreamContext) -> bool | None:
    """True once every resend key has aged out of RESENDS."""
    return True if (await js.stream_info(RESENDS_STREAM)).state.messages == 0 else None


async def worked_off(js: JetStreamContext) -> bool | None:
    """True once every stored alert was delivered and settled (acked or terminated)."""
    for p in range(PARTITIONS):
        info = await js.consumer_info(ALERTS_STREAM, partition_durable(p))
        if info.num_pending or info.num_ack_pending:
            return None
    return True


async def stored_alerts(js: JetStreamContext) -> list[Alert]:
    return [
        alert_decoder.decode(m.data)
        for m in await read_all(js, ALERTS_STREAM, f"{ALERTS_PREFIX}.>")
    ]


# --- bodies without `id`: the resend window --------------------------------------------


async def test_a_resend_within_the_window_is_the_same_alert(
    nc: Client, broker: Counting, url: str, http: httpx.AsyncClient
) -> None:
    js = nc.jetstream()
    first = await post(http, url, tv())
    await asyncio.sleep(5)  # the condition under test: the same body, 5 s later
    second = await post(http, url, tv())
    assert first["duplicate"] is False and second == {**first, "duplicate": True}
    await eventually(lambda: worked_off(js))
    assert broker.placed == {client_order_id("default", first["id"]): 1}
    assert [a.id for a in await stored_alerts(js)] == [first["id"]]


async def test_after_the_window_the_same_body_is_a_new_alert(
    nc: Client, broker: Counting, url: str, http: httpx.AsyncClient, shorten: Shorten,
    worker_settings: WorkerSettings,
) -> None:  # fmt: skip
    js = nc.jetstream()
    await shorten()
    first = await post(http, url, tv())
    assert (await js.stream_info(RESENDS_STREAM)).state.messages == 1  # its key
    await eventually(lambda: window_over(js))
    second = await post(http, url, tv())
    assert first["duplicate"] is False and second["duplicate"] is False
    assert second["id"] != first["id"]
    await eventually(lambda: worked_off(js))
    assert broker.placed == {client_order_id("default", a["id"]): 1 for a in (first, second)}
    assert len(paper_rows(worker_settings.paper_db)) == 2


async def test_the_window_holds_across_ingress_processes_and_a_restart(
    nats_server: NatsServer, nc: Client, tmp_path: Path, http: httpx.AsyncClient,
    shorten: Shorten,
) -> None:  # fmt: skip
    js = nc.jetstream()
    env = ingress_env(nats_server.url)

    def at(process: Process) -> str:
        return f"http://127.0.0.1:{process.port}"

    with (
        ingress_process(env, tmp_path / "a.log") as a,
        ingress_process(env, tmp_path / "b.log") as b,
    ):
        await asyncio.gather(wait_ready(at(a), http), wait_ready(at(b), http))
        first = await post(http, at(a), tv())
        via_b = await post(http, at(b), tv())
        await asyncio.to_thread(a.stop)
        with ingress_process(env, tmp_path / "a2.log") as restarted:
            await wait_ready(at(restarted), http)
            after_restart = await post(http, at(restarted), tv())
        await shorten()  # the window ends: the key ages out of RESENDS
        await eventually(lambda: window_over(js))
        later = await post(http, at(b), tv())
    assert first["duplicate"] is False
    assert via_b == after_restart == {**first, "duplicate": True}
    assert later["duplicate"] is False and later["id"] != first["id"]
    assert [x.id for x in await stored_alerts(js)] == [first["id"], later["id"]]


async def test_an_explicit_id_keeps_the_long_window(
    nc: Client, url: str, http: httpx.AsyncClient, shorten: Shorten
) -> None:
    js = nc.jetstream()
    await shorten()
    first = await post(http, url, tv(id="explicit-1"))
    witness = await post(http, url, tv(qty=2))  # no id: its key marks the window
    await eventually(lambda: window_over(js))
    again = await post(http, url, tv(id="explicit-1"))
    witness_again = await post(http, url, tv(qty=2))
    assert first == {"ok": True, "id": "explicit-1", "duplicate": False}
    assert again == {**first, "duplicate": True}
    assert witness_again["duplicate"] is False  # the resend window did pass
    ids = [a.id for a in await stored_alerts(js)]
    assert ids == ["explicit-1", witness["id"], witness_again["id"]]


async def test_a_signed_request_is_known_by_its_timestamp_not_the_resend_window(
    nats_server: NatsServer, nc: Client, http: httpx.AsyncClient, shorten: Shorten
) -> None:
    js = nc.jetstream()
    await shorten()  # 1 s: far shorter than the 300 s HMAC window
    body = tv(secret=None, qty=3)

    def signed(timestamp: int) -> dict[str, str]:
        return {"X-Signature": sign(HMAC_KEY.encode(), str(timestamp), body),
                "X-Timestamp": str(timestamp)}  # fmt: skip

    signed_at = int(time.time())
    async with serving_ingress(ingress_settings(nats_server.url, hmac_secrets=HMAC_KEY)) as url:
        first = await post(http, url, body, signed(signed_at))
        witness = await post(http, url, tv(qty=7))  # unsigned, no id: marks the window
        await eventually(lambda: window_over(js))
        replayed = await post(http, url, body, signed(signed_at))  # a captured request
        resigned_at = int(time.time())
        assert resigned_at > signed_at  # a second or more has passed
        resigned = await post(http, url, body, signed(resigned_at))
    assert first["duplicate"] is False
    assert replayed == {**first, "duplicate": True}
    assert resigned["duplicate"] is False and resigned["id"] != first["id"]
    ids = [a.id for a in await stored_alerts(js)]
    assert ids == [first["id"], witness["id"], resigned["id"]]


# --- ids scoped per account ------------------------------------------------------------

ACCOUNTS = """
[accounts.default]
broker = "paper"
webhook_secrets_env = ["SECRET_DEFAULT"]

[accounts.alpha]
broker = "paper"
webhook_secrets_env = ["SECRET_ALPHA"]
"""
ALPHA_SECRET, DEFAULT_SECRET = "alpha-secret-1", "default-secret-1"


def cli(server: NatsServer, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ALERTBRIDGE_NATS_URL": server.url, **extra}
    return subprocess.run(
        [ALERTBRIDGE, *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


async def test_another_account_cannot_preempt_an_id(
    nats_server: NatsServer, nc: Client, broker: Counting, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    js = nc.jetstream()
    (tmp_path / "alertbridge.toml").write_text(ACCOUNTS)
    env = {"ALERTBRIDGE_CONFIG": str(tmp_path / "alertbridge.toml"),
           "SECRET_ALPHA": ALPHA_SECRET, "SECRET_DEFAULT": DEFAULT_SECRET}  # fmt: skip
    config = load(IngressSettings, {**env, "ALERTBRIDGE_NATS_URL": nats_server.url,
                                    "ALERTBRIDGE_PARTITIONS": str(PARTITIONS)})  # fmt: skip
    async with serving_ingress(config, ingress_accounts(env)) as url:
        # The attacker holds alpha's secret only, and fires the victim's next id first.
        attack = await post(http, url, tv(secret=ALPHA_SECRET, account="alpha", id="victim-1"))
        as_default = await http.post(f"{url}/webhook", content=tv(secret=ALPHA_SECRET, id="v"))
        assert as_default.status_code == 401  # alpha's secret is no key to default
        own = await post(http, url, tv(secret=DEFAULT_SECRET, id="victim-1"))
    assert attack == own == {"ok": True, "id": "victim-1", "duplicate": False}
    await eventually(lambda: worked_off(js))
    ours = {acct: client_order_id(acct, "victim-1") for acct in ("default", "alpha")}
    assert ours["default"] != ours["alpha"]
    assert broker.placed == {ours["default"]: 1, ours["alpha"]: 1}
    executed = [e for e in await events_of(js, "executed") if isinstance(e, Executed)]
    assert sorted((e.account, e.alert_id, e.client_order_id) for e in executed) == [
        ("alpha", "victim-1", ours["alpha"]),
        ("default", "victim-1", ours["default"]),
    ]
    # The views (a real projector process) keep each account's alert apart, and the CLI
    # shows the one asked for.
    projector = python_module("projector", projector_env(nats_server, tmp_path), tmp_path / "p.log")
    try:
        for acct in ("default", "alpha"):
            shown = partial(shown_executed, nats_server, tmp_path, acct)
            story = await eventually(shown, within=30, interval=0.3)
            assert (story["alert"]["account"], story["alert"]["alert_id"]) == (acct, "victim-1")
            assert story["alert"]["client_order_id"] == ours[acct]
            assert [(e["kind"], e["event"]["account"], e["event"]["client_order_id"])
                    for e in story["timeline"]] == [("executed", acct, ours[acct])]  # fmt: skip
    finally:
        projector.terminate()
        projector.wait(15)


def projector_env(server: NatsServer, root: Path) -> dict[str, str]:
    """`python -m projector` against `server` (no NATS users: the whole API), its file
    under `root`."""
    return {"ALERTBRIDGE_NATS_URL": server.url,
            "ALERTBRIDGE_PROJECTIONS_DB": str(root / "projections.db"),
            "ALERTBRIDGE_LAG_INTERVAL": "0.2", "ALERTBRIDGE_FETCH_TIMEOUT": "0.5"}  # fmt: skip


async def shown_executed(server: NatsServer, root: Path, account: str) -> dict[str, Any] | None:
    """`alertbridge alerts show victim-1 --account <account> --json`, once it says executed."""
    shown = await asyncio.to_thread(
        cli, server, "alerts", "show", "victim-1", "--account", account, "--json",
        ALERTBRIDGE_PROJECTIONS_DB=str(root / "projections.db"),
    )  # fmt: skip
    if shown.returncode != 0:  # no file yet, or the alert not folded in yet
        return None
    story: dict[str, Any] = json.loads(shown.stdout)
    return story if story["alert"]["status"] == "executed" else None


# --- replays: a message id no webhook can take -----------------------------------------


async def test_a_webhook_cannot_forge_a_replays_message_id(
    nc: Client, broker: Counting, url: str, http: httpx.AsyncClient, worker_settings: WorkerSettings
) -> None:
    js = nc.jetstream()
    ours = client_order_id("default", "x")
    broker.refuse_once.add(ours)  # x is dead-lettered on its first try
    # The replay id of x, round 1, in the old form and in the current one; then x.
    for forged in ("x:replay:1", "replay.1.alert.default.x", "x"):
        assert (await post(http, url, tv(id=forged)))["duplicate"] is False
    (entry,) = await eventually(lambda: _entries(js, 1))
    assert entry.alert_id == "x"
    event = await dlq.replay(js, entry.dlq_seq)
    assert await dlq.entries(js) == []
    raw = await js.get_msg(ALERTS_STREAM, seq=event.stream_seq, direct=True)
    stored = alert_decoder.decode(raw.data or b"")
    assert (stored.account, stored.id, stored.replay) == ("default", "x", 1)

    async def executed_again() -> Executed | None:
        done = [e for e in await events_of(js, "executed") if isinstance(e, Executed)]
        return next((e for e in done if (e.alert_id, e.replay) == ("x", 1)), None)

    assert (await eventually(executed_again)).client_order_id == ours
    assert [r[0] for r in paper_rows(worker_settings.paper_db)].count(ours) == 1
    assert broker.placed[ours] == 2  # refused once, then placed by the replay


async def _entries(js: JetStreamContext, n: int) -> list[dlq.DeadLetter] | None:
    found = await dlq.entries(js)
    return found if len(found) >= n else None


async def _dead_letter(js: JetStreamContext, alert: Alert) -> int:
    """Store `alert` on ALERTS and give it a DLQ entry, as the worker does; its DLQ seq."""
    seq = await publish(js, alert)
    raw = await js.get_msg(ALERTS_STREAM, seq=seq, direct=True)
    dlq_seq, _ = await DeadLetters(js).write(
        data=raw.data or b"", original_headers=raw.headers, subject=raw.subject or "",
        seq=seq, reason="terminated: refused", deliveries=1, last_error=None,
    )  # fmt: skip
    return dlq_seq


# What else holds the message id of x's replay 1 (published as the operator could).
IMPOSTORS: dict[str, Callable[[Alert], Alert]] = {
    "another alert": lambda x: make_alert("impostor", replay=1),
    "another account's": lambda x: msgspec.structs.replace(x, account="alpha", replay=1),
    "an earlier round": lambda x: x,
}


@pytest.mark.parametrize("impostor", list(IMPOSTORS))
async def test_a_replay_whose_id_is_taken_keeps_its_entry(nc: Client, impostor: str) -> None:
    js = nc.jetstream()
    x = make_alert("x")
    dlq_seq = await _dead_letter(js, x)
    taken = replay_msg_id(msgspec.structs.replace(x, replay=1))
    other: Alert = IMPOSTORS[impostor](x)
    await js.publish(
        alert_subject(other.account, other.symbol), msgspec.json.encode(other),
        headers={MSG_ID: taken},
    )  # fmt: skip
    with pytest.raises(dlq.DlqError, match="the entry is kept"):
        await dlq.replay(js, dlq_seq)
    assert [e.dlq_seq for e in await dlq.entries(js)] == [dlq_seq]
    assert [e for e in await events_of(js) if isinstance(e, Replayed)] == []
    assert len(await stored_alerts(js)) == 2  # x and the impostor, no replay


async def test_a_replay_run_again_after_a_crash_is_its_own_duplicate(nc: Client) -> None:
    js = nc.jetstream()
    dlq_seq = await _dead_letter(js, make_alert("x"))
    with pytest.raises(CrashedError):
        await dlq.replay(CrashesBeforeDelete(nc), dlq_seq)  # published, entry still there
    assert [e.dlq_seq for e in await dlq.entries(js)] == [dlq_seq]
    event = await dlq.replay(js, dlq_seq)  # the operator runs it again
    assert await dlq.entries(js) == []
    alerts = await stored_alerts(js)
    assert [(a.id, a.replay) for a in alerts] == [("x", 0), ("x", 1)]  # one replay stored
    assert event.stream_seq == 2 and event.replay == 1
    assert len([e for e in await events_of(js) if isinstance(e, Replayed)]) == 1
