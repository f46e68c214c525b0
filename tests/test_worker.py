"""The worker against a real nats-server: execute, redeliver, terminate, retry, order, stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from contracts.headers import MSG_ID
from contracts.messages import AttemptFailed, Executed, Rejected
from contracts.subjects import ALERTS_STREAM, EVENTS_STREAM, alert_subject
from contracts.topology import partition_durable
from contracts.tracing import trace_id_of
from ops.platform import provision
from ops.platform.settings import load
from tests.support import ROOT, eventually, python_module
from tests.workers import (
    FlakyBroker,
    events_of,
    make_alert,
    paper_rows,
    partition_of,
    publish,
    run_worker,
    settled,
    terminal_events,
)
from worker.brokers.base import Order, OrderResult
from worker.brokers.paper import PaperBroker
from worker.execute import client_order_id
from worker.settings import WorkerSettings


@pytest.fixture
def settings(worker_env: dict[str, str]) -> WorkerSettings:
    return load(WorkerSettings, worker_env)


@pytest.fixture
async def paper(settings: WorkerSettings) -> AsyncIterator[PaperBroker]:
    broker = PaperBroker(Path(settings.paper_db))
    yield broker
    await broker.close()


async def test_alert_becomes_one_order_and_one_executed_event(
    nc: Client, paper: PaperBroker, settings: WorkerSettings
) -> None:
    js = nc.jetstream()
    seq = await publish(js, make_alert("a-1", quantity=3.0, price=189.4))
    worker = await run_worker(nc, paper, settings)
    events = await eventually(lambda: terminal_events(js, 1))
    worker.stop()
    (event,) = events
    assert isinstance(event, Executed)
    assert (event.alert_id, event.quantity, event.fill_price, event.stream_seq) == (
        "a-1",
        3.0,
        189.4,
        seq,
    )
    assert event.client_order_id == client_order_id("default", "a-1")
    assert event.already_done is False and event.attempts == 1
    assert paper_rows(settings.paper_db) == [(event.client_order_id, "NASDAQ:AAPL", "buy", 3.0)]


@pytest.mark.parametrize("spans", [True, False])
async def test_events_carry_the_alerts_trace_with_or_without_spans(
    nc: Client, paper: PaperBroker, settings: WorkerSettings, spans: bool
) -> None:
    """A process that records no spans makes none, yet passes the alert's trace on."""
    js = nc.jetstream()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    alert = make_alert("traced-1")
    await js.publish(
        alert_subject(alert.account, alert.symbol),
        msgspec.json.encode(alert),
        headers={MSG_ID: alert.id, "traceparent": f"00-{trace_id}-00f067aa0ba902b7-00"},
    )
    sub = await js.subscribe("events.executed.>", ordered_consumer=True)
    worker = await run_worker(nc, paper, settings, spans=spans)
    try:
        msg = await sub.next_msg(timeout=20)
    finally:
        worker.stop()
        await sub.unsubscribe()
    assert msg.headers is not None
    assert trace_id_of(msg.headers) == trace_id


async def test_redelivery_after_a_crash_does_not_place_a_second_order(
    nc: Client, paper: PaperBroker, settings: WorkerSettings
) -> None:
    """A worker placed the order, then died before its ack: the redelivery finds it."""
    js = nc.jetstream()
    alert = make_alert("crash-1")
    await paper.place(
        Order(client_order_id=client_order_id("default", "crash-1"), account="default",
              symbol=alert.symbol, side="buy", quantity=1.0, order_type="market",
              reference_price=100.0)
    )  # fmt: skip
    await publish(js, alert)
    await run_worker(nc, paper, settings)
    (event,) = await eventually(lambda: terminal_events(js, 1))
    assert isinstance(event, Executed) and event.already_done is True
    assert len(paper_rows(settings.paper_db)) == 1


async def test_terminal_failure_is_rejected_and_terminated_not_retried(
    nc: Client, paper: PaperBroker, settings: WorkerSettings
) -> None:
    js = nc.jetstream()
    await publish(js, make_alert("no-qty", quantity=None))  # no default quantity configured
    await run_worker(nc, paper, settings)
    (event,) = await eventually(lambda: terminal_events(js, 1))
    assert isinstance(event, Rejected) and "no quantity" in event.reason

    async def settled() -> bool | None:
        infos = [await js.consumer_info(ALERTS_STREAM, partition_durable(p)) for p in range(4)]
        done = all(i.num_ack_pending == 0 and i.num_pending == 0 for i in infos)
        return True if done else None

    await eventually(settled)
    assert paper_rows(settings.paper_db) == []
    assert [e for e in await events_of(js) if isinstance(e, AttemptFailed)] == []


async def test_retryable_failure_is_redelivered_by_the_server(
    nc: Client, paper: PaperBroker, settings: WorkerSettings
) -> None:
    js = nc.jetstream()
    flaky = FlakyBroker(paper, failures=2)
    await publish(js, make_alert("flaky-1"))
    await run_worker(nc, flaky, settings)
    (event,) = await eventually(lambda: terminal_events(js, 1))
    assert isinstance(event, Executed) and event.attempts == 3
    failed = [e for e in await events_of(js) if isinstance(e, AttemptFailed)]
    assert [e.attempts for e in failed] == [1, 2]
    assert "broker timed out" in failed[0].error
    assert len(paper_rows(settings.paper_db)) == 1


async def test_an_alert_is_acked_only_once_its_executed_event_is_stored(
    nc: Client, paper: PaperBroker, worker_env: dict[str, str]
) -> None:
    """Ops deletes the EVENTS stream under the worker: the order is placed but its
    `executed` event cannot be stored, so the alert must not be acked. It comes back; once
    EVENTS is back, a redelivery finds the order (no second one) and records it."""
    js = nc.jetstream()
    env = {**worker_env, "ALERTBRIDGE_ACK_WAIT": "1", "ALERTBRIDGE_MAX_DELIVER": "50"}
    settings = load(WorkerSettings, env)
    await provision.apply(js, settings.topology())
    await js.delete_stream(EVENTS_STREAM)
    seq = await publish(js, make_alert("unrecorded"))
    durable = partition_durable(await partition_of(js, seq))
    broker = FlakyBroker(paper, failures=0)  # counts the calls, at the broker's side
    await run_worker(nc, broker, settings)

    async def came_back() -> bool | None:
        info = await js.consumer_info(ALERTS_STREAM, durable)
        return True if info.delivered.consumer_seq >= 3 else None

    await eventually(came_back)  # twice: the first delivery was not acked
    assert len(paper_rows(settings.paper_db)) == 1
    await provision.apply(js, settings.topology())  # ops puts the stream back
    (event,) = await eventually(lambda: terminal_events(js, 1))
    assert isinstance(event, Executed) and event.already_done is True
    assert event.attempts >= 3 and event.stream_seq == seq
    await eventually(lambda: settled(js, settings.partitions))
    assert broker.calls >= 3 and len(paper_rows(settings.paper_db)) == 1


async def test_alerts_of_one_symbol_execute_in_arrival_order(
    nc: Client, paper: PaperBroker, settings: WorkerSettings
) -> None:
    js = nc.jetstream()
    symbols = ["NASDAQ:AAPL", "BRK.B", "BTC/USDT", "ES1!", "ETHUSD"]
    expected: dict[str, list[str]] = {s: [] for s in symbols}
    for i in range(40):
        symbol = symbols[i % len(symbols)]
        alert = make_alert(f"o-{i}", symbol=symbol)
        expected[symbol].append(client_order_id("default", alert.id))
        await publish(js, alert)
    flaky = FlakyBroker(paper, failures=1)  # the first alert retries and holds its symbol back
    await run_worker(nc, flaky, settings)
    await run_worker(nc, paper, settings)  # a second consumer loop competes for the partitions
    await eventually(lambda: terminal_events(js, 40), within=30)
    rows = paper_rows(settings.paper_db)
    assert len(rows) == 40
    for symbol in symbols:
        assert [r[0] for r in rows if r[1] == symbol] == expected[symbol]


async def test_worker_process_stops_cleanly_on_sigterm(
    nc: Client, worker_env: dict[str, str], tmp_path: Path
) -> None:
    js = nc.jetstream()
    log = tmp_path / "worker.log"
    proc = python_module("worker", {**worker_env, "ALERTBRIDGE_DEFAULT_QUANTITY": "1"}, log)
    try:
        await publish(js, make_alert("proc-1", quantity=None))
        await eventually(lambda: terminal_events(js, 1), within=20)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log.read_text()
    assert "worker stopped" in log.read_text()


@pytest.mark.parametrize(
    ("module", "env", "needle"),
    [
        ("worker", {"ALERTBRIDGE_PARTITIONS": "many"}, "ALERTBRIDGE_PARTITIONS"),
        ("worker", {"ALERTBRIDGE_CONFIG": "/nonexistent/alertbridge.toml"}, "ALERTBRIDGE_CONFIG"),
        ("ingress", {"ALERTBRIDGE_SECRETS": ""}, "ALERTBRIDGE_SECRETS"),
        ("ingress", {"ALERTBRIDGE_SECRETS": "longenough", "ALERTBRIDGE_HTTP_PORT": "x"},
         "ALERTBRIDGE_HTTP_PORT"),
    ],
)  # fmt: skip
def test_bad_setting_stops_the_process_naming_the_variable(
    module: str, env: dict[str, str], needle: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module],
        env={"PATH": "/usr/bin:/bin", "ALERTBRIDGE_NATS_URL": "nats://127.0.0.1:1", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert needle in result.stderr


class SlowBroker(FlakyBroker):
    """A broker call that outlasts the consumer's ack_wait."""

    def __init__(self, inner: PaperBroker, seconds: float) -> None:
        super().__init__(inner, failures=0)
        self.seconds = seconds

    async def place(self, order: Order) -> OrderResult:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        return await self.inner.place(order)


async def test_a_slow_broker_call_keeps_its_delivery_with_in_progress(
    nc: Client, paper: PaperBroker, worker_env: dict[str, str]
) -> None:
    js = nc.jetstream()
    slow = load(WorkerSettings, {**worker_env, "ALERTBRIDGE_ACK_WAIT": "1"})
    await provision.apply(js, slow.topology())
    broker = SlowBroker(paper, seconds=2.5)  # 2.5 x ack_wait: without +WPI it comes back
    await publish(js, make_alert("slow-1"))
    await run_worker(nc, broker, slow)
    (event,) = await eventually(lambda: terminal_events(js, 1))
    assert isinstance(event, Executed) and event.attempts == 1
    assert broker.calls == 1
    infos = [await js.consumer_info(ALERTS_STREAM, partition_durable(p)) for p in range(4)]
    assert sum(i.num_redelivered or 0 for i in infos) == 0
