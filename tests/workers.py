"""Shared by the worker tests: alerts, publishing, broker boundaries, running workers."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from opentelemetry.metrics import MeterProvider

from contracts.headers import MSG_ID
from contracts.messages import Alert, Event, Executed, Rejected, alert_msg_id
from contracts.subjects import ALERTS_STREAM, alert_subject
from contracts.topology import partition_durable
from ops.platform import provision
from ops.platform.natsconn import jetstream
from ops.platform.settings import load
from ops.tools.events import read_events
from worker.accounts import Desk
from worker.brokers.base import Broker, Order, OrderResult
from worker.brokers.paper import PaperBroker
from worker.consumer import Worker
from worker.errors import RetryableError
from worker.settings import WorkerSettings


def make_alert(alert_id: str, symbol: str = "NASDAQ:AAPL", **fields: Any) -> Alert:
    defaults: dict[str, Any] = {"side": "buy", "quantity": 1.0, "price": 100.0}
    return Alert(
        id=alert_id, symbol=symbol, received_at=datetime.now(UTC), **{**defaults, **fields}
    )


def make_order(coid: str = "ab-1", **fields: Any) -> Order:
    """An order as the worker hands it to a broker: 10 AAPL at market, priced at 190.25,
    overridable field by field."""
    values: dict[str, Any] = {
        "client_order_id": coid,
        "account": "default",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": 10.0,
        "order_type": "market",
        "reference_price": 190.25,
        **fields,
    }
    return Order(**values)


async def publish(js: JetStreamContext, alert: Alert) -> int:
    ack = await js.publish(
        alert_subject(alert.account, alert.symbol),
        msgspec.json.encode(alert),
        headers={MSG_ID: alert_msg_id(alert.account, alert.id)},
    )
    return ack.seq


async def events_of(js: JetStreamContext, kind: str = ">") -> list[Event]:
    return await read_events(js, f"events.{kind}" if kind == ">" else f"events.{kind}.>")


async def terminal_events(js: JetStreamContext, n: int) -> list[Event] | None:
    found: list[Event] = [e for e in await events_of(js) if isinstance(e, Executed | Rejected)]
    return found if len(found) >= n else None


class FlakyBroker:
    """A broker boundary that times out `failures` times, then delegates to the paper book."""

    name = "flaky-paper"
    can_lookup = True

    def __init__(self, inner: PaperBroker, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    async def place(self, order: Order) -> OrderResult:
        self.calls += 1
        if self.calls <= self.failures:
            raise RetryableError("broker timed out")
        return await self.inner.place(order)

    async def lookup(self, order: Order) -> OrderResult | None:
        return await self.inner.lookup(order)

    async def equity(self) -> float | None:
        return await self.inner.equity()

    async def close(self) -> None:
        await self.inner.close()


async def run_worker(
    nc: Client,
    broker: Broker,
    settings: WorkerSettings,
    *,
    spans: bool = True,
    meter_provider: MeterProvider | None = None,
) -> Worker:
    """A worker on `nc` with one account on `broker`, running until stopped (or the test ends)."""
    desk = Desk.single(broker)
    worker = Worker(
        jetstream(nc, settings), desk, settings, spans=spans, meter_provider=meter_provider
    )
    task = asyncio.create_task(worker.run())
    worker_tasks.add(task)
    task.add_done_callback(worker_tasks.discard)
    return worker


worker_tasks: set[asyncio.Task[None]] = set()


async def partition_of(js: JetStreamContext, seq: int) -> int:
    """The partition the stream put ALERTS message `seq` in (its subject's last token)."""
    stored = await js.get_msg(ALERTS_STREAM, seq=seq, direct=True)
    return int((stored.subject or "").rsplit(".", 1)[1])


async def settled(js: JetStreamContext, partitions: int) -> bool | None:
    """True once every partition consumer has nothing pending nor unacked."""
    for p in range(partitions):
        info = await js.consumer_info(ALERTS_STREAM, partition_durable(p))
        if info.num_pending or info.num_ack_pending:
            return None
    return True


def paper_rows(db: str) -> list[tuple[str, str, str, float]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT client_order_id, symbol, side, quantity FROM orders ORDER BY seq"
        ).fetchall()


async def provisioned(env: dict[str, str]) -> None:
    """Apply the topology `env` describes to its server, as `alertbridge provision` does."""
    settings = load(WorkerSettings, env)
    nc = await nats.connect(list(settings.nats_url))
    try:
        await provision.apply(nc.jetstream(), settings.topology())
    finally:
        await nc.close()
