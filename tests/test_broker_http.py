"""The signed HTTP forwarder against a local receiver that checks every signature.

The receiver is what a user would write: it recomputes the HMAC over the raw body
and the timestamp header with its own code, compares in constant time, refuses
stale timestamps, keeps orders by `Idempotency-Key` (409 on a second one), and
answers lookups at `<url>/<client_order_id>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts import tracing
from contracts.messages import Alert
from ops.platform.accounts import Account
from tests.support import free_port, serving_aiohttp
from tests.workers import make_order
from worker.brokers import _http
from worker.brokers.base import Broker, Order, OrderResult
from worker.brokers.http_forward import HttpForwardBroker, HttpForwardConfig
from worker.errors import (
    DuplicateOrderError,
    OrderRejectedError,
    RetryableError,
    TerminalError,
)
from worker.execute import client_order_id, execute

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SECRET = "forwarding-secret-never-logged"
FAST = 0.5  # seconds: the client timeout in these tests
MAX_SKEW = 300


@dataclass
class Receiver:
    """A user's order endpoint: verifies, stores by idempotency key, answers lookups."""

    secret: str = SECRET
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    # Scripted answers for the next requests: (status, text).
    script: list[tuple[int, str]] = field(default_factory=list)
    # What a 2xx carries: "order" (id and status), "empty" (204), "text" (not JSON).
    reply: str = "order"
    delay: float = 0.0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.verify])
        app.router.add_post("/hooks/orders", self.receive)
        app.router.add_get("/hooks/orders/{coid}", self.find)
        return app

    def _signed(self, request: web.Request, body: bytes) -> bool:
        timestamp = request.headers.get("X-Alertbridge-Timestamp", "")
        given = request.headers.get("X-Alertbridge-Signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > MAX_SKEW:
            return False
        mac = hmac.new(self.secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        return hmac.compare_digest(given, "sha256=" + mac.hexdigest())

    @web.middleware
    async def verify(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if self.delay:
            await asyncio.wait_for(self.release.wait(), self.delay)
        if not self._signed(request, body):
            return web.json_response({"error": "bad signature"}, status=401)
        if self.script:
            status, text = self.script.pop(0)
            return web.Response(status=status, text=text)
        return await handler(request)

    async def receive(self, request: web.Request) -> web.StreamResponse:
        order = json.loads(await request.read())
        key = request.headers["Idempotency-Key"]
        assert key == order["client_order_id"]
        if key in self.orders:
            return web.json_response({"error": "duplicate", "id": f"rx-{key}"}, status=409)
        stored = {"id": f"rx-{len(self.orders) + 1}", "status": "accepted", **order}
        self.orders[key] = stored
        if self.reply == "empty":
            return web.Response(status=204)
        if self.reply == "text":
            return web.Response(status=202, text="queued")
        return web.json_response({"id": stored["id"], "status": "accepted"}, status=201)

    async def find(self, request: web.Request) -> web.Response:
        stored = self.orders.get(request.match_info["coid"])
        if stored is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(stored)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    yield state
    state.release.set()


@pytest.fixture
async def url(receiver: Receiver) -> AsyncIterator[str]:
    async with serving_aiohttp(receiver.app()) as base:
        yield f"{base}/hooks/orders"


@asynccontextmanager
async def connected(url: str, **config: Any) -> AsyncIterator[HttpForwardBroker]:
    values: dict[str, Any] = {"secret": SECRET, "lookup": True, "timeout": FAST}
    values.update(config)
    broker = HttpForwardBroker(HttpForwardConfig(url=url, **values))
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
async def broker(url: str) -> AsyncIterator[HttpForwardBroker]:
    async with connected(url) as adapter:
        yield adapter


# --- success ----------------------------------------------------------------------


def test_the_adapter_is_a_broker(broker: HttpForwardBroker) -> None:
    adapter: Broker = broker  # mypy checks the protocol
    assert adapter.name == "http"


async def test_a_market_order_is_forwarded_signed(
    broker: HttpForwardBroker, receiver: Receiver
) -> None:
    result = await broker.place(make_order())
    assert (result.client_order_id, result.broker_order_id, result.status) == (
        "ab-1",
        "rx-1",
        "accepted",
    )
    assert (result.side, result.quantity, result.fill_price) == ("buy", 10.0, None)
    # The body is the Order itself, every field, decodable back into one.
    assert msgspec.json.decode(receiver.bodies[-1], type=Order) == make_order()
    assert receiver.orders["ab-1"]["account"] == "default"


async def test_limit_and_exit_prices_travel_as_sent(
    broker: HttpForwardBroker, receiver: Receiver
) -> None:
    order = make_order(order_type="limit", limit_price=189.4, take_profit=195.5, stop_loss=185.25)
    await broker.place(order)
    sent = receiver.orders["ab-1"]
    assert (sent["order_type"], sent["limit_price"]) == ("limit", 189.4)
    assert (sent["take_profit"], sent["stop_loss"]) == (195.5, 185.25)


async def test_close_is_forwarded_as_close(broker: HttpForwardBroker, receiver: Receiver) -> None:
    result = await broker.place(make_order("ab-close", side="close", quantity=0.0))
    assert (result.side, result.quantity) == ("close", 0.0)
    assert receiver.orders["ab-close"]["side"] == "close"


@pytest.mark.parametrize("reply", ["empty", "text"])
async def test_a_2xx_without_an_order_in_it_is_still_done(
    broker: HttpForwardBroker, receiver: Receiver, reply: str
) -> None:
    receiver.reply = reply
    result = await broker.place(make_order())
    assert (result.broker_order_id, result.status, result.side, result.quantity) == (
        "ab-1",
        "accepted",
        "buy",
        10.0,
    )


async def test_the_receiver_reports_no_equity(broker: HttpForwardBroker) -> None:
    assert await broker.equity() is None


# --- duplicates and lookup --------------------------------------------------------


async def test_409_is_a_duplicate_that_lookup_finds(
    broker: HttpForwardBroker, receiver: Receiver
) -> None:
    first = await broker.place(make_order())
    with pytest.raises(DuplicateOrderError, match="409"):
        await broker.place(make_order())
    found = await broker.lookup(make_order())
    assert found == first
    assert await broker.lookup(make_order("ab-unknown")) is None
    assert len(receiver.orders) == 1


async def test_without_lookup_the_receivers_409_is_its_word_that_the_order_exists(
    url: str, receiver: Receiver
) -> None:
    alert = Alert(
        id="tv-1", account="webhook-1", symbol="NASDAQ:AAPL", side="sell", quantity=3.0,
        price=190.25, received_at=datetime.now(UTC),
    )  # fmt: skip
    coid = client_order_id("webhook-1", "tv-1")
    async with connected(url, lookup=False) as broker:
        first, first_done = await execute(alert, Account(), broker, None)
        # A redelivery: the receiver answers 409, and there is no GET to ask it with.
        again, again_done = await execute(alert, Account(), broker, None)
    assert (first_done, again_done) == (False, True)
    assert first.broker_order_id == "rx-1"
    assert again == OrderResult(
        client_order_id=coid, broker_order_id=coid, status="accepted", side="sell", quantity=3.0
    )
    assert list(receiver.orders) == [coid]
    assert len(receiver.bodies) == 2  # two POSTs, no GET was sent


async def test_a_lookup_answer_that_is_no_order_is_terminal(
    broker: HttpForwardBroker, receiver: Receiver
) -> None:
    receiver.script.append((200, '{"ok": true}'))
    with pytest.raises(TerminalError, match="not an order"):
        await broker.lookup(make_order())


# --- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "text"),
    [(400, "unknown symbol NASDAQ:AAPL"), (403, "account disabled"), (422, "x" * 5000)],
)
async def test_other_4xx_are_rejected_with_the_answer(
    broker: HttpForwardBroker, receiver: Receiver, status: int, text: str
) -> None:
    receiver.script.append((status, text))
    with pytest.raises(OrderRejectedError, match=f"answered {status}") as caught:
        await broker.place(make_order())
    assert text[:50] in str(caught.value)
    assert len(str(caught.value)) < 400  # the answer is truncated


async def test_a_wrong_secret_is_refused_by_the_receiver(url: str, receiver: Receiver) -> None:
    async with connected(url, secret="not-the-secret") as broker:
        with pytest.raises(OrderRejectedError, match=r"401: .*bad signature") as caught:
            await broker.place(make_order())
    assert "not-the-secret" not in str(caught.value)
    assert receiver.orders == {}
    config = HttpForwardConfig(url=url, secret=SECRET)
    assert SECRET not in repr(config)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_rate_limits_and_server_errors_are_retryable(
    broker: HttpForwardBroker, receiver: Receiver, status: int
) -> None:
    receiver.script.append((status, "try later"))
    with pytest.raises(RetryableError, match=str(status)):
        await broker.place(make_order())
    assert (await broker.place(make_order())).status == "accepted"


async def test_a_slow_receiver_is_a_retryable_timeout(
    broker: HttpForwardBroker, receiver: Receiver
) -> None:
    receiver.delay = 10 * FAST
    with pytest.raises(RetryableError, match="no answer within"):
        await broker.place(make_order())


async def test_connection_refused_is_retryable() -> None:
    async with connected(f"http://127.0.0.1:{free_port()}/orders") as broker:
        with pytest.raises(RetryableError, match=r"(?i)connect"):
            await broker.place(make_order())


async def test_each_request_is_a_client_span_that_carries_the_trace(
    broker: HttpForwardBroker, receiver: Receiver, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    # A recording provider, not the global one.
    monkeypatch.setattr(_http, "_spans", tracing.Spans("test", provider=provider))
    with tracer.start_as_current_span("http place order") as parent:
        await broker.place(make_order())
    (request,) = [s for s in exporter.get_finished_spans() if s.name == "POST"]
    assert request.parent is not None
    assert request.parent.span_id == parent.get_span_context().span_id
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 201
    # A webhook URL may carry a token: the span names the host, never the URL.
    assert request.attributes["server.address"] == "127.0.0.1"
    assert "url.full" not in request.attributes
    _, trace_id, span_id, _ = receiver.headers[-1]["traceparent"].split("-")
    assert trace_id == format(parent.get_span_context().trace_id, "032x")
    assert span_id == format(request.context.span_id, "016x") if request.context else None


async def test_no_span_is_made_outside_a_recorded_one(
    broker: HttpForwardBroker, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_http, "_spans", tracing.Spans("test", provider=provider))
    await broker.place(make_order())
    assert exporter.get_finished_spans() == ()
    assert "traceparent" not in receiver.headers[-1]


async def test_a_redirect_is_a_wrong_url_not_followed() -> None:
    """A POST that a redirect would turn into a bodiless GET must not count as placed."""
    elsewhere: list[str] = []

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound(location="/landing")

    async def landing(request: web.Request) -> web.Response:
        elsewhere.append(request.method)
        return web.json_response({"status": "accepted"})

    app = web.Application()
    app.router.add_post("/orders", moved)
    app.router.add_route("*", "/landing", landing)
    async with serving_aiohttp(app) as base, connected(f"{base}/orders") as broker:
        with pytest.raises(TerminalError, match=r"302.*is the URL right"):
            await broker.place(make_order())
    assert elsewhere == []


async def test_errors_never_show_the_webhook_url(receiver: Receiver) -> None:
    """A user's webhook URL may carry a token in its path or query."""
    async with connected(f"http://127.0.0.1:{free_port()}/hook/tok-123?key=tok-456") as broker:
        with pytest.raises(RetryableError) as caught:
            await broker.place(make_order())
    assert "tok-" not in str(caught.value), caught.value
