"""Fixtures: a real nats-server per test module, fresh streams per test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from contracts.subjects import (
    ADVISORIES_STREAM,
    ALERTS_STREAM,
    DLQ_STREAM,
    EVENTS_STREAM,
    RESENDS_STREAM,
)
from contracts.topology import MEMBERS_STREAM
from ops.platform import provision
from ops.platform.settings import load
from tests.compose_support import compose, compose_schema  # noqa: F401 (fixtures)
from tests.secured import (  # noqa: F401 (fixtures)
    as_console,
    as_ingress,
    as_notifier,
    as_ops,
    as_projector,
    as_worker,
    secured,
)
from tests.support import NatsServer
from tests.workers import worker_tasks
from worker.settings import WorkerSettings


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real JetStream server for the module, on a free port with a temp store."""
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture
def worker_env(nats_server: NatsServer, tmp_path: Path) -> dict[str, str]:
    """Environment for a worker (and the topology) against the module's server."""
    return {
        "ALERTBRIDGE_NATS_URL": nats_server.url,
        "ALERTBRIDGE_PARTITIONS": "4",
        "ALERTBRIDGE_PAPER_DB": str(tmp_path / "paper.db"),
        "ALERTBRIDGE_FETCH_TIMEOUT": "0.5",
        "ALERTBRIDGE_RETRY_BACKOFF": "0.2,0.4",
        "ALERTBRIDGE_HEALTH_PORT": "0",  # tests that want it pick a free port
    }


@pytest.fixture
async def nc(nats_server: NatsServer, worker_env: dict[str, str]) -> AsyncIterator[Client]:
    """A connection to the module's server, with the streams freshly (re)created."""
    client = await nats.connect(nats_server.url)
    js = client.jetstream()
    # MEMBERS_STREAM: the last test's workers were cancelled, not gone: no members left.
    for stream in (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM, ADVISORIES_STREAM, RESENDS_STREAM,
                   MEMBERS_STREAM):  # fmt: skip
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream)
    await provision.apply(js, load(WorkerSettings, worker_env).topology())
    yield client
    await client.close()


@pytest.fixture(autouse=True)
async def _stop_workers() -> AsyncIterator[None]:
    """Workers a test started in-process end with the test."""
    yield
    tasks = list(worker_tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
