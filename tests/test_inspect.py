"""`alertbridge status` against a real server (`alerts show`: tests/test_projector.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client

from tests.support import NatsServer
from tests.workers import make_alert, publish

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
    assert sum(c["pending"] for n, c in consumers.items() if n.startswith("ALERTS/worker-p")) == 3
    assert "ALERTS/projector" not in consumers  # the views read ALERTS by sequence
    assert consumers["EVENTS/projector"]["pending"] == 0  # the views' own reader there
    assert "ADVISORIES/dlq-router" in consumers
    assert all(
        n.startswith(("ALERTS/worker-p", "ADVISORIES/")) or n.endswith(("/projector", "/notifier"))
        for n in consumers
    )  # durables only
    assert found["dlq_depth"] == 0 and found["missing"] == []
    table = await cli(nats_server, "status")
    assert table.returncode == 0
    assert "ALERTS/worker-p0" in table.stdout and "DLQ depth: 0" in table.stdout
