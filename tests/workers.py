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

from contracts.headers import MSG_ID
from contracts.messages import Alert, Event, Executed, Rejected, alert_msg_id
from contracts.subjects import alert_subject
from ops import provision
from ops.events import read_events
from ops.natsconn import jetstream
from ops.settings import WorkerSettings, load
from worker.accounts import Desk
from worker.brokers.base import Broker, Order, OrderResult
from worker.brokers.paper import PaperBroker
from worker.consumer import Worker
from worker.errors import RetryableError


def make_alert(alert_id: str, symbol: str = "NASDAQ:AAPL", **fields: Any) -> Alert:
    defaults: dict[str, Any] = {"side": "buy", "quantity": 1.0, "price": 100.0}
    return Alert(
        id=alert_id, symbol=symbol, received_at=datetime.now(UTC), **{**defaults, **fields}
    )


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
    with_router: bool = True,
    spans: bool = True,
) -> Worker:
    worker = Worker(
        jetstream(nc, settings), Desk.single(broker), settings, with_router=with_router,
        spans=spans,
    )  # fmt: skip
    task = asyncio.create_task(worker.run())
    worker_tasks.add(task)
    task.add_done_callback(worker_tasks.discard)
    return worker


worker_tasks: set[asyncio.Task[None]] = set()


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
