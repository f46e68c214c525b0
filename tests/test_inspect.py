"""`alertbridge status` and `alertbridge alerts show` against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client

from ops.platform.settings import load
from tests.support import NatsServer, eventually
from tests.workers import FlakyBroker, make_alert, publish, run_worker, terminal_events
from worker.brokers.paper import PaperBroker
from worker.settings import WorkerSettings

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")


async def cli(server: NatsServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ALERTBRIDGE_NATS_URL": server.url, "ALERTBRIDGE_PARTITIONS": "4"}
    return await asyncio.to_thread(
        subprocess.run,
        [ALERTBRIDGE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_status_shows_streams_consumers_and_dlq_depth(
    nc: Client, nats_server: NatsServer, worker_env: dict[str, str]
) -> None:
    js = nc.jetstream()
    for i in range(3):
        await publish(js, make_alert(f"st-{i}", symbol=f"S{i}"))
    found = json.loads((await cli(nats_server, "status", "--json")).stdout)
    streams = {s["name"]: s for s in found["streams"]}
    assert streams["ALERTS"]["messages"] == 3 and streams["ALERTS"]["last"] is not None
    assert streams["DLQ"]["messages"] == 0 and streams["DLQ"]["first"] is None
    consumers = {f"{c['stream']}/{c['name']}": c for c in found["consumers"]}
    assert sum(c["pending"] for n, c in consumers.items() if n.startswith("ALERTS/")) == 3
    assert "ADVISORIES/dlq-router" in consumers
    assert all(n.startswith(("ALERTS/worker-p", "ADVISORIES/")) for n in consumers)  # durables
    assert found["dlq_depth"] == 0 and found["missing"] == []
    table = await cli(nats_server, "status")
    assert table.returncode == 0
    assert "ALERTS/worker-p0" in table.stdout and "DLQ depth: 0" in table.stdout


async def test_alerts_show_tells_the_story(
    nc: Client, nats_server: NatsServer, worker_env: dict[str, str]
) -> None:
    js = nc.jetstream()
    settings = load(WorkerSettings, worker_env)
    paper = PaperBroker(Path(settings.paper_db))
    try:
        await publish(js, make_alert("story-1"))
        await run_worker(nc, FlakyBroker(paper, failures=1), settings)
        await eventually(lambda: terminal_events(js, 1))
    finally:
        await paper.close()
    shown = json.loads((await cli(nats_server, "alerts", "show", "story-1", "--json")).stdout)
    assert shown["outcome"] == "executed"
    assert [s["kind"] for s in shown["steps"]] == ["attempt_failed", "executed"]
    assert shown["alert"]["symbol"] == "NASDAQ:AAPL"
    text = (await cli(nats_server, "alerts", "show", "story-1")).stdout
    assert "outcome  executed" in text and "attempt_failed" in text
    unknown = json.loads((await cli(nats_server, "alerts", "show", "nope", "--json")).stdout)
    assert unknown["steps"] == [] and unknown["outcome"].startswith("no events")
