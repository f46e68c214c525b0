"""Supervised consume loops against a real nats-server, read from outside: the ERROR
log, `alertbridge_worker_loop_restarts_total` on /metrics, /readyz (ops/healthserver's
uvicorn serving worker/__main__.py's `readiness`), the streams and the broker's book.

A loop dies for real: its nak cannot be sent because the server was killed under it
(the worker's connection buffers nothing while it reconnects, so nats-py refuses the
nak at once), or its connection is closed for good (as nats-py does itself when the
server sends an -ERR, e.g. after a config reload revoked the worker's user).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider

from contracts.messages import Executed
from ops.platform.healthserver import health_server
from ops.platform.natsconn import jetstream
from ops.platform.settings import load
from ops.tools.events import read_events
from tests.support import NatsServer, eventually, free_port
from tests.workers import (
    FlakyBroker,
    make_alert,
    paper_rows,
    partition_of,
    provisioned,
    publish,
    run_worker,
)
from worker.__main__ import readiness
from worker.brokers.base import Order, OrderResult
from worker.brokers.paper import PaperBroker
from worker.consumer import Worker
from worker.errors import RetryableError
from worker.settings import WorkerSettings
from worker.supervise import RESTART_BACKOFF, UNREADY_AFTER

RESTARTS = "alertbridge_worker_loop_restarts_total"
Http = httpx.AsyncClient


@pytest.fixture
def meters() -> Iterator[MeterProvider]:
    """The worker's metrics, exported as Prometheus text on /metrics (as the process's are)."""
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    yield provider
    provider.shutdown()  # takes its collector out of the Prometheus registry


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR, logger="worker.supervise")
    return caplog


class Held(FlakyBroker):
    """The first call waits for `release`, then times out; later calls reach the book."""

    def __init__(self, inner: PaperBroker) -> None:
        super().__init__(inner, failures=0)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def place(self, order: Order) -> OrderResult:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            await self.release.wait()
            raise RetryableError("broker timed out")
        return await self.inner.place(order)


@contextlib.asynccontextmanager
async def health(conn: Client, settings: WorkerSettings, worker: Worker) -> AsyncIterator[Http]:
    """/readyz and /metrics as the worker process serves them: uvicorn, in this event loop
    (where the worker's connection lives), on a free port."""
    js = jetstream(conn, settings)
    topology = settings.topology()
    server = health_server(lambda: readiness(conn, js, topology, worker), "127.0.0.1", free_port())
    serving = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.config.port}") as http:
            await eventually(lambda: _answers(http))
            yield http
    finally:
        server.should_exit = True
        await serving


async def _answers(http: Http) -> bool | None:
    try:
        await http.get("/healthz")
    except httpx.TransportError:
        return None
    return True


async def problems(http: Http) -> list[str]:
    """What /readyz reports (empty: ready, with a 200)."""
    answer = await http.get("/readyz")
    found: list[str] = answer.json()["problems"]
    assert (answer.status_code == 200) == (not found)
    return found


def naming(http: Http, loops: set[str]) -> Any:
    """A probe: /readyz's problems once every loop in `loops` is among them."""

    async def probe() -> list[str] | None:
        found = await problems(http)
        return found if loops <= named(found) else None

    return probe


def named(found: list[str]) -> set[str]:
    """The consume loops /readyz names."""
    prefix = "consume loop "
    return {p.removeprefix(prefix).split(":")[0] for p in found if p.startswith(prefix)}


async def restarts(http: Http, loop: str) -> float:
    """`alertbridge_worker_loop_restarts_total{loop=…}` on /metrics."""
    text = (await http.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.startswith(RESTARTS + "{") and f'loop="{loop}"' in head:
            total += float(value)
    return total


def failures_logged(caplog: pytest.LogCaptureFixture, loop: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and f"consume loop {loop} failed" in r.getMessage()
    ]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A server of this test's own, to kill and restart (same port, same store)."""
    own = NatsServer(tmp_path / "store").start()
    yield own
    own.stop()


async def test_a_loop_that_dies_mid_nak_is_restarted_and_readyz_follows(
    server: NatsServer,
    worker_env: dict[str, str],
    meters: MeterProvider,
    errors: pytest.LogCaptureFixture,
) -> None:
    env = {**worker_env, "ALERTBRIDGE_NATS_URL": server.url, "ALERTBRIDGE_PARTITIONS": "2"}
    env["ALERTBRIDGE_ACK_WAIT"] = "2"  # the nak never arrived: the server redelivers then
    settings = load(WorkerSettings, env)
    await provisioned(env)
    ops = await nats.connect(server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    # nats-py's "no buffering while reconnecting": an ack, nak or term sent while the
    # connection is down fails at once (OutboundBufferLimitError).
    conn = await nats.connect(
        server.url, pending_size=0, reconnect_time_wait=0.2, max_reconnect_attempts=-1
    )
    paper = PaperBroker(Path(settings.paper_db))
    broker = Held(paper)
    worker = await run_worker(conn, broker, settings, meter_provider=meters)
    try:
        async with health(conn, settings, worker) as http:
            js = ops.jetstream()
            seq = await publish(js, make_alert("held"))
            loop = f"partition-{await partition_of(js, seq)}"
            await asyncio.wait_for(broker.entered.wait(), 10)
            server.kill()
            await eventually(lambda: _true(not conn.is_connected))
            broker.release.set()  # the attempt fails, and its nak cannot be sent
            await eventually(lambda: _some(failures_logged(errors, loop)))
            down = await eventually(naming(http, {loop}), within=UNREADY_AFTER + 5)
            assert named(down) == {loop}  # the other loops did not die
            server.start()
            await eventually(lambda: _ready(http), within=20)
            assert await restarts(http, loop) >= 1
            await publish_when_back(js, make_alert("after"))
            done = await eventually(lambda: _executed(js, {"held", "after"}), within=20)
    finally:
        worker.stop()
        await conn.close()
        await ops.close()
        await paper.close()
    assert broker.calls >= 3  # "held" failed, came back (its nak lost) and went through
    rows = paper_rows(settings.paper_db)
    assert sorted(r[0] for r in rows) == sorted(e.client_order_id for e in done.values())


async def test_a_loop_that_keeps_failing_keeps_readyz_unready(
    nc: Client,
    nats_server: NatsServer,
    worker_env: dict[str, str],
    meters: MeterProvider,
    errors: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    settings = load(WorkerSettings, worker_env)
    conn = await nats.connect(nats_server.url)  # `nc` provisioned the streams
    paper = PaperBroker(tmp_path / "paper.db")
    worker = await run_worker(conn, paper, settings, meter_provider=meters)
    loops = {f"partition-{p}" for p in range(settings.partitions)} | {"dlq-router"}
    try:
        async with health(conn, settings, worker) as http:
            await eventually(lambda: _ready(http))
            await conn.close()  # for good: every run of every loop now fails at once
            await eventually(naming(http, loops), within=UNREADY_AFTER + 5)
            # Unready throughout, across the longest restart backoff and the restart
            # after it: no restart that fails at once makes a loop count as live.
            until = time.monotonic() + RESTART_BACKOFF[-1] + 1
            while time.monotonic() < until:
                assert loops <= named(await problems(http))
                await asyncio.sleep(0.1)  # sampling a state that must hold, not a wait
            counted = {loop: await restarts(http, loop) for loop in loops}
    finally:
        worker.stop()
        await paper.close()
    assert all(n >= 3 for n in counted.values()), counted
    assert all(len(failures_logged(errors, loop)) >= 4 for loop in loops)


async def publish_when_back(js: nats.js.JetStreamContext, alert: Any) -> None:
    """Publish once the server takes it (the msg id keeps a retried publish single)."""

    async def published() -> bool | None:
        try:
            await publish(js, alert)
        except (nats.errors.Error, TimeoutError):
            return None
        return True

    await eventually(published, within=20)


async def _executed(js: nats.js.JetStreamContext, ids: set[str]) -> dict[str, Executed] | None:
    found = {e.alert_id: e for e in await read_events(js) if isinstance(e, Executed)}
    return found if set(found) >= ids else None


async def _ready(http: Http) -> bool | None:
    return True if await problems(http) == [] else None


async def _true(value: bool) -> bool | None:
    return True if value else None


async def _some(items: list[logging.LogRecord]) -> list[logging.LogRecord] | None:
    return items or None
