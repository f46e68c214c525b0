"""Dead letters against a real nats-server: replay (executed once, never doubled), and
`alertbridge dlq` listing, showing, replaying and purging entries."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client

from contracts.messages import Executed, Replayed
from ops.tools import dlq
from tests.dlq_support import (
    all_events,
    dlq_entries,
    nc_fixture,  # noqa: F401 (the `nc` fixture)
    paper_fixture,  # noqa: F401 (the `paper` fixture)
    settings_fixture,  # noqa: F401 (the `settings` fixture)
)
from tests.support import NatsServer, eventually
from tests.workers import FlakyBroker, make_alert, paper_rows, publish, run_worker
from worker.brokers.base import Order, OrderResult
from worker.brokers.paper import PaperBroker
from worker.errors import RetryableError
from worker.settings import WorkerSettings

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")


class PlacesThenTimesOut(FlakyBroker):
    """The broker took the order, but its answer never arrived: the worst case for doubling."""

    async def place(self, order: Order) -> OrderResult:
        self.calls += 1
        if self.calls == 1:
            await self.inner.place(order)
        raise RetryableError("read timeout")

    async def lookup(self, order: Order) -> OrderResult | None:
        raise RetryableError("read timeout")


async def test_replay_executes_once_and_never_doubles(
    nc: Client, paper: PaperBroker, settings: WorkerSettings
) -> None:
    js = nc.jetstream()
    await publish(js, make_alert("replay-me", quantity=4.0))
    await publish(js, make_alert("went-through", symbol="BRK.B"))
    # The first alert always fails; the second reached the broker, but never heard back.
    flaky = FlakyBroker(paper, failures=99)
    silent = PlacesThenTimesOut(paper, failures=0)
    worker = await run_worker(nc, RoutingBroker(flaky, silent), settings)
    entries = await eventually(lambda: dlq_entries(js, 2), within=20)
    worker.stop()
    assert len(paper_rows(settings.paper_db)) == 1  # went-through is in the book already
    replayed = [await dlq.replay(js, e.dlq_seq) for e in entries]
    assert {r.alert_id for r in replayed} == {"replay-me", "went-through"}
    assert all(r.replay == 1 for r in replayed)
    with pytest.raises(dlq.DlqError, match="no DLQ entry"):
        await dlq.replay(js, entries[0].dlq_seq)  # gone once replayed
    await run_worker(nc, paper, settings)

    async def executed() -> list[Executed] | None:
        found = [e for e in await all_events(js) if isinstance(e, Executed)]
        return found if len(found) == 2 else None

    done = {e.alert_id: e for e in await eventually(executed)}
    assert done["replay-me"].already_done is False and done["replay-me"].replay == 1
    assert done["went-through"].already_done is True  # found by client order id
    rows = paper_rows(settings.paper_db)
    assert sorted(r[1] for r in rows) == ["BRK.B", "NASDAQ:AAPL"]  # one order each
    assert await dlq.entries(js) == []
    assert len([e for e in await all_events(js) if isinstance(e, Replayed)]) == 2


class RoutingBroker(FlakyBroker):
    """Sends NASDAQ:AAPL to one broker boundary and everything else to another."""

    def __init__(self, aapl: FlakyBroker, rest: FlakyBroker) -> None:
        self.aapl, self.rest = aapl, rest

    async def place(self, order: Order) -> OrderResult:
        return await (self.aapl if order.symbol == "NASDAQ:AAPL" else self.rest).place(order)

    async def lookup(self, order: Order) -> OrderResult | None:
        return await (self.aapl if order.symbol == "NASDAQ:AAPL" else self.rest).lookup(order)


def cli(server: NatsServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ALERTBRIDGE_NATS_URL": server.url}
    return subprocess.run(
        [ALERTBRIDGE, *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


async def test_dlq_cli_lists_shows_replays_and_purges(
    nc: Client, paper: PaperBroker, settings: WorkerSettings, nats_server: NatsServer
) -> None:
    js = nc.jetstream()
    await publish(js, make_alert("cli-1", quantity=None))  # no default quantity: terminal
    await publish(js, make_alert("cli-2", symbol="ES1!", side="close"))  # nothing to close
    worker = await run_worker(nc, paper, settings)
    await eventually(lambda: dlq_entries(js, 2))
    worker.stop()
    listed = await asyncio.to_thread(cli, nats_server, "dlq", "ls")
    assert listed.returncode == 0 and "cli-1" in listed.stdout and "cli-2" in listed.stdout
    rows = [
        json.loads(x)
        for x in (
            await asyncio.to_thread(cli, nats_server, "dlq", "ls", "--json")
        ).stdout.splitlines()
    ]
    ids = {r["alert_id"]: r["dlq_seq"] for r in rows}
    shown = await asyncio.to_thread(cli, nats_server, "dlq", "show", str(ids["cli-1"]))
    assert "no quantity" in shown.stdout
    missing = await asyncio.to_thread(cli, nats_server, "dlq", "show", "999")
    assert missing.returncode == 1 and "no DLQ entry 999" in missing.stderr
    purged = await asyncio.to_thread(cli, nats_server, "dlq", "purge", "--yes", str(ids["cli-2"]))
    assert purged.returncode == 0 and "purged 1 entry" in purged.stdout
    again = await asyncio.to_thread(
        cli, nats_server, "dlq", "replay", "--all", "--reason", "terminated"
    )
    assert again.returncode == 0 and "cli-1" in again.stdout
    assert await dlq.entries(js) == []
    usage = await asyncio.to_thread(cli, nats_server, "dlq", "replay")
    assert usage.returncode == 2
