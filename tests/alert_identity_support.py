"""What the alert-identity tests share (tests/test_alert_identity_window.py,
tests/test_alert_identity_accounts.py, tests/test_alert_identity_replays.py): a
TradingView body without `id`, the paper book behind a boundary that counts orders, the
fixtures `worker_settings`, `paper`, `broker` (a worker on that boundary), `http` and
`url` (an ingress under uvicorn), posting a webhook, and reading ALERTS back."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.messages import Alert, alert_decoder
from contracts.subjects import ALERTS_PREFIX, ALERTS_STREAM
from contracts.topology import partition_durable
from ops.platform.settings import load
from ops.tools.streams import read_all
from tests.ingress_support import SECRET, serving_ingress
from tests.ingress_support import settings as ingress_settings
from tests.support import NatsServer
from tests.workers import FlakyBroker, run_worker
from worker.brokers.base import Order, OrderResult
from worker.brokers.paper import PaperBroker
from worker.errors import TerminalError
from worker.settings import WorkerSettings

PARTITIONS = 4  # worker_env's and ingress_env's


def tv(**fields: Any) -> bytes:
    """A TradingView body without `id` (fields override; None drops one)."""
    base: dict[str, Any] = {"secret": SECRET, "ticker": "NASDAQ:AAPL", "action": "buy", "qty": 1}
    return json.dumps({k: v for k, v in {**base, **fields}.items() if v is not None}).encode()


class Counting(FlakyBroker):
    """The paper book behind a boundary that counts `place` calls per client order id and
    refuses (terminally) the first call for each id in `refuse_once`."""

    name = "counting-paper"

    def __init__(self, inner: PaperBroker) -> None:
        super().__init__(inner, failures=0)
        self.placed: Counter[str] = Counter()
        self.refuse_once: set[str] = set()

    async def place(self, order: Order) -> OrderResult:
        self.placed[order.client_order_id] += 1
        if order.client_order_id in self.refuse_once:
            self.refuse_once.discard(order.client_order_id)
            raise TerminalError("refused once by the test's broker")
        return await self.inner.place(order)


@pytest.fixture(name="worker_settings")
def worker_settings_fixture(worker_env: dict[str, str]) -> WorkerSettings:
    return load(WorkerSettings, worker_env)


@pytest.fixture(name="paper")
async def paper_fixture(worker_settings: WorkerSettings) -> AsyncIterator[PaperBroker]:
    broker = PaperBroker(Path(worker_settings.paper_db))
    yield broker
    await broker.close()


@pytest.fixture(name="broker")
async def broker_fixture(
    nc: Client, paper: PaperBroker, worker_settings: WorkerSettings
) -> Counting:
    """A worker running on the counting boundary (stopped with the test)."""
    counting = Counting(paper)
    await run_worker(nc, counting, worker_settings)
    return counting


@pytest.fixture(name="http")
async def http_fixture() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture(name="url")
async def url_fixture(nats_server: NatsServer, nc: Client) -> AsyncIterator[str]:
    """An ingress (unsigned, global secret) under uvicorn, ready."""
    async with serving_ingress(ingress_settings(nats_server.url)) as base:
        yield base


async def post(
    http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """POST a webhook that must be accepted; its answer."""
    response = await http.post(f"{url}/webhook", content=body, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def worked_off(js: JetStreamContext) -> bool | None:
    """True once every stored alert was delivered and settled (acked or terminated)."""
    for p in range(PARTITIONS):
        info = await js.consumer_info(ALERTS_STREAM, partition_durable(p))
        if info.num_pending or info.num_ack_pending:
            return None
    return True


async def stored_alerts(js: JetStreamContext) -> list[Alert]:
    return [
        alert_decoder.decode(m.data)
        for m in await read_all(js, ALERTS_STREAM, f"{ALERTS_PREFIX}.>")
    ]
