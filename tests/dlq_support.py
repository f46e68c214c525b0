"""What the dead-letter tests share (tests/test_dlq_routing.py, tests/test_dlq_replay.py):
the fixtures `settings` (max_deliver=2), `nc` (the module's fresh streams, with consumers
for those settings) and `paper`, and reading the DLQ and the events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.messages import Event
from ops.platform import provision
from ops.platform.settings import load
from ops.tools import dlq
from ops.tools.events import read_events
from worker.brokers.paper import PaperBroker
from worker.settings import WorkerSettings


@pytest.fixture(name="settings")
def settings_fixture(worker_env: dict[str, str]) -> WorkerSettings:
    return load(WorkerSettings, {**worker_env, "ALERTBRIDGE_MAX_DELIVER": "2"})


@pytest.fixture(name="nc")
async def nc_fixture(nc: Client, settings: WorkerSettings) -> AsyncIterator[Client]:
    """The module's fresh streams, with consumers for max_deliver=2."""
    await provision.apply(nc.jetstream(), settings.topology())
    yield nc


@pytest.fixture(name="paper")
async def paper_fixture(settings: WorkerSettings) -> AsyncIterator[PaperBroker]:
    broker = PaperBroker(Path(settings.paper_db))
    yield broker
    await broker.close()


async def dlq_entries(js: JetStreamContext, n: int) -> list[dlq.DeadLetter] | None:
    found = await dlq.entries(js)
    return found if len(found) >= n else None


async def all_events(js: JetStreamContext) -> list[Event]:
    return await read_events(js)
