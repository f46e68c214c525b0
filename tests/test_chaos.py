"""Real worker processes under stress: per-symbol order across processes, kill -9 while
thousands of alerts flow, and a nats-server restart under the ingress."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client

from contracts.messages import Executed
from ops import dlq, provision
from ops.events import read_events
from ops.settings import WorkerSettings, load
from tests.support import NatsServer, eventually, free_port, python_module, wait_for_port
from tests.workers import make_alert, provisioned, publish
from worker.execute import client_order_id

SEED = int(os.environ.get("CHAOS_SEED", str(random.SystemRandom().randrange(1 << 30))))


def book(db: str) -> list[tuple[str, str]]:
    """(client order id, symbol) of every paper order, in the order the broker took them."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT client_order_id, symbol FROM orders ORDER BY seq").fetchall()


def check_order(rows: list[tuple[str, str]], expected: dict[str, list[str]]) -> None:
    for symbol, ids in expected.items():
        got = [cid for cid, sym in rows if sym == symbol]
        assert got == ids, f"order broken for {symbol} (seed {SEED})"


class Workers:
    """N `python -m worker` processes that can be killed and restarted."""

    def __init__(self, env: dict[str, str], logs: Path, n: int) -> None:
        self.env, self.logs = env, logs
        self.procs = [self._start(i) for i in range(n)]

    def _start(self, i: int) -> subprocess.Popen[bytes]:
        return python_module("worker", self.env, self.logs / f"worker-{i}.log")

    def kill9_and_restart(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()
        self.procs[i] = self._start(i)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "ALERTBRIDGE_PARTITIONS": "8", "ALERTBRIDGE_DEFAULT_QUANTITY": "1",
            "ALERTBRIDGE_ACK_WAIT": "2"}  # fmt: skip


@pytest.fixture
async def nc(nc: Client, env: dict[str, str]) -> Client:
    await provision.apply(nc.jetstream(), load(WorkerSettings, env).topology())
    return nc


async def executed_count(nc: Client, n: int) -> int | None:
    found = len([e for e in await read_events(nc.jetstream(), "events.executed.>")])
    return found if found >= n else None


async def test_per_symbol_order_holds_across_three_worker_processes(
    nc: Client, env: dict[str, str], tmp_path: Path
) -> None:
    js = nc.jetstream()
    symbols = [f"SYM{i}" for i in range(30)]
    expected: dict[str, list[str]] = {s: [] for s in symbols}
    workers = Workers(env, tmp_path, 3)
    try:
        for i in range(600):
            symbol = symbols[(i * 7) % len(symbols)]
            alert = make_alert(f"ord-{i}", symbol=symbol)
            expected[symbol].append(client_order_id("default", alert.id))
            await publish(js, alert)
        await eventually(lambda: executed_count(nc, 600), within=90, interval=0.5)
    finally:
        workers.stop()
    rows = book(env["ALERTBRIDGE_PAPER_DB"])
    assert len(rows) == 600
    check_order(rows, expected)
    executed = await read_events(js, "events.executed.>")
    assert all(isinstance(e, Executed) for e in executed)


async def test_kill_9_workers_while_thousands_of_alerts_flow(
    nc: Client, env: dict[str, str], tmp_path: Path
) -> None:
    print(f"chaos seed {SEED} (CHAOS_SEED to repeat)")
    rng = random.Random(SEED)
    js = nc.jetstream()
    total = 2000
    symbols = [f"CH{i}" for i in range(40)]
    expected: dict[str, list[str]] = {s: [] for s in symbols}
    workers = Workers(env, tmp_path, 3)
    kills = 0
    try:
        for i in range(total):
            symbol = rng.choice(symbols)
            alert = make_alert(f"chaos-{i}", symbol=symbol)
            expected[symbol].append(client_order_id("default", alert.id))
            await publish(js, alert)
            if i % 150 == 149:  # a kill -9 every 150 alerts, while they are being executed
                workers.kill9_and_restart(rng.randrange(3))
                kills += 1
        for _ in range(3):
            await asyncio.sleep(0.7)  # let work get in flight, then kill again
            workers.kill9_and_restart(rng.randrange(3))
            kills += 1

        async def settled() -> int | None:
            done = await executed_count(nc, 0) or 0
            dead = len(await dlq.entries(js))
            return done + dead if done + dead >= total else None

        await eventually(settled, within=180, interval=1.0)
    finally:
        workers.stop()
    rows = book(env["ALERTBRIDGE_PAPER_DB"])
    executed = {e.alert_id for e in await read_events(js, "events.executed.>")}
    dead = {e.alert_id for e in await dlq.entries(js)}
    ids = {f"chaos-{i}" for i in range(total)}
    assert executed | dead == ids and not executed & dead, f"seed {SEED}"
    assert len(rows) == len({cid for cid, _ in rows}) == len(executed)  # no doubled order
    check_order(
        rows, {s: [c for c in cids if c in {r[0] for r in rows}] for s, cids in expected.items()}
    )
    assert kills >= 16


async def test_nats_restart_mid_stream_loses_nothing_and_dedup_survives(
    tmp_path: Path, worker_env: dict[str, str]
) -> None:
    server = NatsServer(tmp_path / "store").start()
    env = {
        **worker_env,
        "ALERTBRIDGE_NATS_URL": server.url,
        "ALERTBRIDGE_DEFAULT_QUANTITY": "1",
        "ALERTBRIDGE_SECRETS": "restart-secret",
        "ALERTBRIDGE_PUBLISH_TIMEOUT": "0.5",
    }
    await provisioned(env)
    port = free_port()
    worker = python_module("worker", env, tmp_path / "worker.log")
    ingress = python_module(
        "ingress", {**env, "ALERTBRIDGE_HTTP_PORT": str(port)}, tmp_path / "ingress.log"
    )
    url = f"http://127.0.0.1:{port}/webhook/restart-secret"
    try:
        await asyncio.to_thread(wait_for_port, port, 30)
        async with httpx.AsyncClient(timeout=5) as http:
            await eventually(lambda: _ready(http, port), within=30)

            refused = 0

            async def send(i: int) -> dict[str, object]:
                nonlocal refused
                body = json.dumps({"id": f"rs-{i}", "symbol": f"R{i % 10}", "side": "buy"})
                for _ in range(100):  # TradingView resends 5xx; so does this sender
                    try:
                        r = await http.post(url, content=body)
                    except httpx.TransportError:
                        await asyncio.sleep(0.2)
                        continue
                    if r.status_code == 200:
                        answer: dict[str, object] = r.json()
                        return answer
                    assert r.status_code == 503, r.text
                    refused += 1
                    await asyncio.sleep(0.2)
                raise AssertionError(f"rs-{i} never accepted")

            answers = [await send(i) for i in range(100)]
            restart_at = time.monotonic()
            server.stop()  # mid-stream: the next sends see 503 until it is back
            sender = asyncio.gather(*(send(i) for i in range(100, 300)))
            await asyncio.sleep(1.0)
            server.start()
            answers += await sender
            assert time.monotonic() - restart_at < 60
            assert refused > 0  # the outage was real: the ingress said 503, never a lie
            assert [a["id"] for a in answers] == [f"rs-{i}" for i in range(300)]

            check = await nats.connect(server.url)
            try:
                await eventually(lambda: executed_count(check, 300), within=60, interval=0.5)
            finally:
                await check.close()
            rows = book(env["ALERTBRIDGE_PAPER_DB"])
            assert len(rows) == 300
            again = [await send(i) for i in (0, 50, 150, 299)]
            assert all(a["duplicate"] is True for a in again)  # dedup survived the restart
    finally:
        for proc in (ingress, worker):
            proc.terminate()
            proc.wait(20)
        server.stop()


async def _ready(http: httpx.AsyncClient, port: int) -> bool | None:
    try:
        r = await http.get(f"http://127.0.0.1:{port}/readyz")
    except httpx.TransportError:
        return None
    return True if r.status_code == 200 else None
