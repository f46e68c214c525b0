"""The same code on a 3-node JetStream cluster with R3 streams: kill the ALERTS leader
while alerts flow, then bring it back."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import APIError, ServiceUnavailableError

from contracts.subjects import ALERTS_STREAM
from ops import provision
from ops.events import read_events
from ops.settings import WorkerSettings, load
from tests.support import NatsServer, cluster, eventually, free_port, python_module, wait_for_port

SECRET = "cluster-secret-1"
TOTAL = 300


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NatsServer]]:
    servers = [s.start() for s in cluster(tmp_path)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def env(nodes: list[NatsServer], tmp_path: Path) -> dict[str, str]:
    return {
        "ALERTBRIDGE_NATS_URL": ",".join(n.url for n in nodes),
        "ALERTBRIDGE_REPLICAS": "3",
        "ALERTBRIDGE_PARTITIONS": "4",
        "ALERTBRIDGE_ACK_WAIT": "3",
        "ALERTBRIDGE_FETCH_TIMEOUT": "0.5",
        "ALERTBRIDGE_PAPER_DB": str(tmp_path / "paper.db"),
        "ALERTBRIDGE_DEFAULT_QUANTITY": "1",
        "ALERTBRIDGE_SECRETS": SECRET,
        "ALERTBRIDGE_HEALTH_PORT": "0",
        "ALERTBRIDGE_PUBLISH_TIMEOUT": "1.0",
        "ALERTBRIDGE_MAX_ALERT_AGE": "0",
    }


@pytest.fixture
async def nc(nodes: list[NatsServer], env: dict[str, str]) -> AsyncIterator[Client]:
    client = await nats.connect([n.url for n in nodes], max_reconnect_attempts=-1)
    settings = load(WorkerSettings, env)

    async def provisioned() -> bool | None:
        try:  # the meta leader is elected a moment after the routes connect
            await provision.apply(client.jetstream(), settings.topology())
        except (ServiceUnavailableError, APIError, TimeoutError):
            return None
        return True

    await eventually(provisioned, within=30, interval=0.5)
    yield client
    await client.close()


async def leader(nc: Client) -> str:
    info = await nc.jetstream().stream_info(ALERTS_STREAM)
    assert info.cluster is not None and info.cluster.leader is not None
    return info.cluster.leader


class Sender:
    """Posts alerts like TradingView: resends 503s (and only 503s) until stored."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url = http, url
        self.accepted: dict[str, bool] = {}
        self.refused = 0

    async def send(self, i: int) -> None:
        body = json.dumps({"id": f"cl-{i}", "symbol": f"C{i % 12}", "side": "buy"})
        for _ in range(200):
            try:
                answer = await self.http.post(self.url, content=body)
            except httpx.TransportError:
                await asyncio.sleep(0.1)
                continue
            if answer.status_code == 200:
                self.accepted[f"cl-{i}"] = answer.json()["duplicate"]
                return
            assert answer.status_code == 503, answer.text  # never a 504, never a lie
            self.refused += 1
            await asyncio.sleep(0.25)
        raise AssertionError(f"cl-{i} never accepted")

    async def send_all(self, ids: range) -> None:
        await asyncio.gather(*(self.send(i) for i in ids))


async def all_executed(nc: Client) -> int | None:
    try:
        events = await read_events(nc.jetstream(), "events.executed.>")
    except (TimeoutError, APIError):
        return None
    found = {e.alert_id for e in events}
    return len(found) if len(found) >= TOTAL else None


async def caught_up(nc: Client) -> bool | None:
    """Every replica of ALERTS is online and current again."""
    info = await nc.jetstream().stream_info(ALERTS_STREAM)
    replicas = (info.cluster.replicas if info.cluster else None) or []
    ok = len(replicas) == 2 and all(r.current and not r.offline for r in replicas)
    return True if ok and info.state.messages >= TOTAL else None


async def test_leader_killed_mid_stream_then_back(
    nodes: list[NatsServer], env: dict[str, str], nc: Client, tmp_path: Path
) -> None:
    port = free_port()
    procs = [python_module("worker", env, tmp_path / f"worker-{i}.log") for i in range(2)]
    procs.append(
        python_module("ingress", {**env, "ALERTBRIDGE_HTTP_PORT": str(port)}, tmp_path / "in.log")
    )
    try:
        await asyncio.to_thread(wait_for_port, port, 30)
        async with httpx.AsyncClient(timeout=5) as http:
            sender = Sender(http, f"http://127.0.0.1:{port}/webhook/{SECRET}")
            await sender.send_all(range(TOTAL // 3))
            name = await leader(nc)
            victim = nodes[int(name.removeprefix("n"))]
            victim.kill()  # the ALERTS leader dies while the rest of the alerts flow
            await sender.send_all(range(TOTAL // 3, TOTAL))
            assert await leader(nc) != name  # a new leader took over
            await eventually(lambda: all_executed(nc), within=120, interval=1.0)
            victim.start()  # back, same store: it catches up from the others
            await eventually(lambda: caught_up(nc), within=60, interval=0.5)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert sorted(sender.accepted) == sorted(f"cl-{i}" for i in range(TOTAL))
    with sqlite3.connect(env["ALERTBRIDGE_PAPER_DB"]) as db:
        rows = db.execute("SELECT client_order_id FROM orders").fetchall()
    assert len(rows) == len(set(rows)) == TOTAL  # every 200 executed exactly once
    print(f"cluster: {sender.refused} answers were 503 while the leader moved; all resent")
