"""A broker outage against a real worker process, every retry setting at its default
but the max age: retries last while the alert is fresh (worker.outcomes). An outage
shorter than the max age costs no alert; a longer one ends the alerts it outlived
`expired`, with the broker's last error as the reason, and never places them late.

The broker is tests.chaos_broker's, answering 503 until `down_until`; the history is
read from outside: its calls, the EVENTS and DLQ streams.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from contracts.messages import Executed, Expired
from ops.platform import provision
from ops.platform.settings import load
from ops.tools import dlq
from ops.tools.events import read_events
from tests.chaos_broker import Receiver, broker_env, write_accounts
from tests.fleet import Fleet
from tests.history import settle
from tests.support import eventually, serving_aiohttp
from tests.workers import make_alert, publish
from worker.settings import WorkerSettings

MAX_AGE = 8.0


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    defaults = ("ALERTBRIDGE_RETRY_BACKOFF", "ALERTBRIDGE_FETCH_TIMEOUT")
    env = {k: v for k, v in worker_env.items() if k not in defaults}
    return {**env, "ALERTBRIDGE_MAX_ALERT_AGE": str(MAX_AGE)}


async def _run(
    nc: Client, env: dict[str, str], tmp_path: Path, outage: float, ids: list[str]
) -> tuple[Receiver, list[float]]:
    """Publish `ids` (one symbol each) at the start of an `outage`; run one worker until
    each is settled: executed or dead-lettered. Returns the broker and when each of its
    placements came, in seconds from the publish."""
    js = nc.jetstream()
    await provision.apply(js, load(WorkerSettings, env).topology())
    receiver = Receiver()
    async with serving_aiohttp(receiver.app()) as base:
        accounts = write_accounts(tmp_path / "accounts.toml", f"{base}/orders/w0")
        fleet = Fleet(lambda _: {**env, **broker_env(accounts)}, 1, tmp_path)
        try:
            await fleet.start()
            receiver.down_until = time.monotonic() + outage
            start = time.monotonic()
            for i, alert_id in enumerate(ids):
                await publish(js, make_alert(alert_id, symbol=f"OUT{i}", price=float(i + 1)))
            await settle(js, set(ids), within=MAX_AGE + 20)

            async def dead_or_done() -> bool | None:
                events = await read_events(js)
                ended = {e.alert_id for e in events if isinstance(e, Executed)}
                ended |= {d.alert_id for d in await dlq.entries(js)}
                return True if ended >= set(ids) else None

            await eventually(dead_or_done, within=MAX_AGE + 20)
        finally:
            await fleet.stop()
    return receiver, [c.at - start for c in receiver.calls if c.placed]


async def test_an_outage_shorter_than_the_max_age_costs_no_alert(
    nc: Client, env: dict[str, str], tmp_path: Path
) -> None:
    ids = [f"short-{i}" for i in range(4)]
    receiver, placed = await _run(nc, env, tmp_path, outage=MAX_AGE / 2, ids=ids)
    js = nc.jetstream()
    executed = [e for e in await read_events(js) if isinstance(e, Executed)]
    assert sorted(e.alert_id for e in executed) == ids
    assert receiver.refused >= len(ids)  # each was refused at least once, then retried
    assert all(e.attempts > 1 for e in executed)
    assert await dlq.entries(js) == []
    assert len(placed) == len(ids) and min(placed) >= MAX_AGE / 2


async def test_an_outage_longer_than_the_max_age_expires_with_the_brokers_error(
    nc: Client, env: dict[str, str], tmp_path: Path
) -> None:
    ids = [f"long-{i}" for i in range(3)]
    receiver, placed = await _run(nc, env, tmp_path, outage=MAX_AGE + 6, ids=ids)
    js = nc.jetstream()
    assert placed == []  # nothing placed late, after the outage
    entries = await dlq.entries(js)
    assert sorted(d.alert_id for d in entries) == ids
    for entry in entries:
        assert entry.reason == "expired"
        assert entry.last_error is not None and "503" in entry.last_error, entry.last_error
    expired = [e for e in await read_events(js) if isinstance(e, Expired)]
    assert sorted(e.alert_id for e in expired) == ids
    assert all("503" in e.last_error and e.attempts >= 3 for e in expired), expired
    assert receiver.refused >= 3 * len(ids)
