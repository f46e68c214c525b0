"""The Alpaca adapter against a local server that speaks Alpaca's Trading API v2.

The server keeps a book like Alpaca's paper account: unique client order ids (422
"client_order_id must be unique"), positions as `GET /v2/positions/{symbol}` shows them
(Alpaca's position object: `qty` a string, negative for a short, `side` long / short;
crypto positions named without the "/"; 404 "position does not exist" when flat), the
`DELETE /v2/positions/{symbol}` liquidation the adapter must not use (it takes no client
order id), buying power (403), unknown assets (422), market hours (a market order sent
while the market is closed is only accepted), Alpaca's error body
`{"code": ..., "message": ...}`, and scripted 429/5xx answers and slow answers.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from tests.support import free_port, serving_aiohttp
from worker.brokers.alpaca import LIVE_URL, PAPER_URL, AlpacaBroker, AlpacaConfig
from worker.brokers.base import Broker, Order
from worker.errors import (
    DuplicateOrderError,
    OrderRejectedError,
    RetryableError,
    TerminalError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY_ID = "PKTESTKEY"
SECRET = "alpaca-secret-never-logged"
PRICES = {"AAPL": 190.25, "MSFT": 410.5, "BTC/USD": 97000.0}
FAST = 0.5  # seconds: the client timeout in these tests


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def _order_json(
    body: dict[str, Any], *, status: str, fill: float | None, order_type: str
) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": str(uuid.uuid4()),
        "client_order_id": body.get("client_order_id") or str(uuid.uuid4()),
        "created_at": now,
        "updated_at": now,
        "submitted_at": now,
        "filled_at": now if fill is not None else None,
        "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, body["symbol"])),
        "symbol": body["symbol"],
        "asset_class": "crypto" if "/" in body["symbol"] else "us_equity",
        "notional": None,
        "qty": body["qty"],
        "filled_qty": body["qty"] if fill is not None else "0",
        "filled_avg_price": None if fill is None else f"{fill}",
        "order_class": body.get("order_class", ""),
        "order_type": order_type,
        "type": order_type,
        "side": body["side"],
        "time_in_force": body.get("time_in_force", "day"),
        "limit_price": body.get("limit_price"),
        "stop_price": body.get("stop_price"),
        "status": status,
        "extended_hours": False,
        "legs": None,
    }


def _number(value: float) -> str:
    """A number as Alpaca writes one: a decimal string, "15" rather than "15.0"."""
    return f"{value:.9f}".rstrip("0").rstrip(".")


def _position_json(symbol: str, qty: float) -> dict[str, Any]:
    """Alpaca's position object; `qty` is negative for a short."""
    price = PRICES.get(symbol) or PRICES[f"{symbol[:-3]}/{symbol[-3:]}"]
    crypto = symbol not in PRICES
    value = _number(qty * price)
    return {
        "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)), "symbol": symbol,
        "exchange": "CRYPTO" if crypto else "NASDAQ",
        "asset_class": "crypto" if crypto else "us_equity", "asset_marginable": not crypto,
        "avg_entry_price": _number(price), "qty": _number(qty), "qty_available": _number(qty),
        "side": "long" if qty > 0 else "short", "market_value": value, "cost_basis": value,
        "unrealized_pl": "0", "unrealized_plpc": "0", "unrealized_intraday_pl": "0",
        "unrealized_intraday_plpc": "0", "current_price": _number(price),
        "lastday_price": _number(price), "change_today": "0",
    }  # fmt: skip


@dataclass
class AlpacaBook:
    """A local Alpaca: its order and position endpoints, with its documented error answers."""

    buying_power: float = 100_000.0
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    # By Alpaca's position symbol: "AAPL", "BTCUSD" (a crypto pair without its "/").
    positions: dict[str, float] = field(default_factory=dict)
    # Closed: a market order is accepted and waits for the open; no position moves.
    market_open: bool = True
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    # Scripted answers for the next requests: (status, body).
    script: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    delay: float = 0.0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.gate])
        app.router.add_post("/v2/orders", self.submit)
        app.router.add_get("/v2/orders:by_client_order_id", self.by_client_order_id)
        app.router.add_get("/v2/positions/{symbol}", self.position)
        app.router.add_delete("/v2/positions/{symbol}", self.close_position)
        app.router.add_get("/v2/account", self.account)
        return app

    @web.middleware
    async def gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path_qs, body))
        if self.delay:
            # A slow Alpaca: the client gives up first; the test releases us at the end.
            await asyncio.wait_for(self.release.wait(), self.delay)
        if (
            request.headers.get("APCA-API-KEY-ID") != KEY_ID
            or request.headers.get("APCA-API-SECRET-KEY") != SECRET
        ):
            return _error(401, 40110000, "request is not authorized")
        if self.script:
            status, answer = self.script.pop(0)
            return web.json_response(answer, status=status)
        return await handler(request)

    async def submit(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        symbol = body["symbol"]
        if symbol not in PRICES:
            return _error(422, 40010001, f"asset {symbol!r} not found")
        if body["client_order_id"] in self.orders:
            return _error(422, 40010001, "client_order_id must be unique")
        qty, price = float(body["qty"]), PRICES[symbol]
        if body["side"] == "buy" and qty * price > self.buying_power:
            return _error(403, 40310000, "insufficient buying power")
        if body["type"] == "market" and not body.get("order_class") and self.market_open:
            order = _order_json(body, status="filled", fill=price, order_type="market")
            self._move(symbol, qty if body["side"] == "buy" else -qty)
        else:
            order = _order_json(body, status="accepted", fill=None, order_type=body["type"])
        self.orders[order["client_order_id"]] = order
        return web.json_response(order)

    def _move(self, symbol: str, signed: float) -> None:
        held = self.positions.get(symbol.replace("/", ""), 0.0) + signed
        if abs(held) < 1e-9:
            self.positions.pop(symbol.replace("/", ""), None)  # flat: no position object
        else:
            self.positions[symbol.replace("/", "")] = held

    async def account(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "id": "4d2c1e8f-0000-4000-8000-000000000001", "account_number": "PA3TEST",
                "status": "ACTIVE", "currency": "USD", "cash": "100000",
                "buying_power": f"{self.buying_power}", "equity": "100000.5",
                "last_equity": "99000", "portfolio_value": "100000.5",
                "pattern_day_trader": False, "trading_blocked": False,
            }
        )  # fmt: skip

    async def by_client_order_id(self, request: web.Request) -> web.Response:
        coid = request.query.get("client_order_id", "")
        if coid not in self.orders:
            return _error(404, 40410000, f"order not found for {coid}")
        return web.json_response(self.orders[coid])

    async def position(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        if symbol not in self.positions:
            return _error(404, 40410000, "position does not exist")
        return web.json_response(_position_json(symbol, self.positions[symbol]))

    async def close_position(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        held = self.positions.pop(symbol, 0.0)
        if not held:
            return _error(404, 40410000, "position does not exist")
        body = {
            "symbol": symbol,
            "qty": f"{abs(held)}",
            "side": "sell" if held > 0 else "buy",
            "time_in_force": "day",
        }
        order = _order_json(body, status="accepted", fill=None, order_type="market")
        self.orders[order["client_order_id"]] = order
        return web.json_response(order)


@pytest.fixture
async def book() -> AsyncIterator[AlpacaBook]:
    state = AlpacaBook()
    yield state
    state.release.set()


@pytest.fixture
async def alpaca_url(book: AlpacaBook) -> AsyncIterator[str]:
    async with serving_aiohttp(book.app()) as url:
        yield url


@asynccontextmanager
async def connected(url: str, **config: Any) -> AsyncIterator[AlpacaBroker]:
    values: dict[str, Any] = {"key_id": KEY_ID, "secret_key": SECRET, "timeout": FAST}
    values.update(config)
    broker = AlpacaBroker(AlpacaConfig(base_url=url, **values))
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
async def broker(alpaca_url: str) -> AsyncIterator[AlpacaBroker]:
    async with connected(alpaca_url) as adapter:
        yield adapter


def _order(coid: str = "ab-1", **fields: Any) -> Order:
    values: dict[str, Any] = {
        "client_order_id": coid,
        "account": "alpaca-paper",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": 10.0,
        "order_type": "market",
    }
    values.update(fields)
    return Order(**values)


def _sent(book: AlpacaBook) -> dict[str, Any]:
    """The body of the last POST /v2/orders."""
    posts = [body for method, path, body in book.requests if method == "POST"]
    assert posts and posts[-1] is not None
    return posts[-1]


# --- success ----------------------------------------------------------------------


def test_the_adapter_is_a_broker(broker: AlpacaBroker) -> None:
    adapter: Broker = broker  # mypy checks the protocol
    assert adapter.name == "alpaca"


async def test_market_buy_fills(broker: AlpacaBroker, book: AlpacaBook) -> None:
    result = await broker.place(_order())
    assert (result.client_order_id, result.status, result.side) == ("ab-1", "filled", "buy")
    assert (result.quantity, result.fill_price) == (10.0, 190.25)
    assert result.broker_order_id == book.orders["ab-1"]["id"]
    assert _sent(book) == {
        "symbol": "AAPL",
        "qty": "10",
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": "ab-1",
    }


async def test_limit_sell_is_accepted_at_its_price(broker: AlpacaBroker, book: AlpacaBook) -> None:
    result = await broker.place(
        _order(side="sell", quantity=2.5, order_type="limit", limit_price=195.5)
    )
    assert (result.status, result.side, result.quantity, result.fill_price) == (
        "accepted",
        "sell",
        2.5,
        None,
    )
    sent = _sent(book)
    assert (sent["type"], sent["qty"], sent["limit_price"]) == ("limit", "2.5", "195.5")
    assert "stop_price" not in sent


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(None, {"type": "stop", "stop_price": "200"}),
     (201.0, {"type": "stop_limit", "stop_price": "200", "limit_price": "201"})],
)  # fmt: skip
async def test_stop_orders(
    broker: AlpacaBroker, book: AlpacaBook, limit: float | None, expected: dict[str, str]
) -> None:
    await broker.place(_order(order_type="stop", stop_price=200.0, limit_price=limit))
    sent = _sent(book)
    assert {k: sent[k] for k in expected} == expected
    assert ("limit_price" in sent) == (limit is not None)


async def test_take_profit_and_stop_loss_make_a_bracket(
    broker: AlpacaBroker, book: AlpacaBook
) -> None:
    result = await broker.place(
        _order(order_type="limit", limit_price=189.4, take_profit=195.5, stop_loss=185.25)
    )
    assert result.status == "accepted"
    sent = _sent(book)
    assert sent["order_class"] == "bracket"
    assert sent["take_profit"] == {"limit_price": "195.5"}
    assert sent["stop_loss"] == {"stop_price": "185.25"}
    assert book.orders["ab-1"]["order_class"] == "bracket"


async def test_one_exit_leg_makes_an_oto(broker: AlpacaBroker, book: AlpacaBook) -> None:
    await broker.place(_order(stop_loss=185.0))
    sent = _sent(book)
    assert (sent["order_class"], sent["stop_loss"]) == ("oto", {"stop_price": "185"})
    assert "take_profit" not in sent


async def test_time_in_force_is_configurable_and_crypto_uses_gtc(
    alpaca_url: str, book: AlpacaBook
) -> None:
    async with connected(alpaca_url, time_in_force="gtc") as broker:
        await broker.place(_order("ab-stock"))
        assert _sent(book)["time_in_force"] == "gtc"
    async with connected(alpaca_url) as broker:
        result = await broker.place(_order("ab-crypto", symbol="BTC/USD", quantity=0.0125))
        assert _sent(book)["time_in_force"] == "gtc"
        assert _sent(book)["qty"] == "0.0125"
        assert result.fill_price == 97000.0


def test_paper_is_the_default_endpoint() -> None:
    assert AlpacaConfig(key_id=KEY_ID, secret_key=SECRET).base_url == PAPER_URL
    assert LIVE_URL == "https://api.alpaca.markets"


# --- duplicates and lookup --------------------------------------------------------


async def test_a_second_submit_is_a_duplicate_that_lookup_finds(
    broker: AlpacaBroker, book: AlpacaBook
) -> None:
    first = await broker.place(_order())
    with pytest.raises(DuplicateOrderError, match="client_order_id must be unique"):
        await broker.place(_order())
    assert await broker.lookup(_order()) == first
    assert await broker.lookup(_order("ab-unknown")) is None
    assert len(book.orders) == 1


async def test_insufficient_buying_power_is_rejected(broker: AlpacaBroker) -> None:
    with pytest.raises(OrderRejectedError, match="403: insufficient buying power"):
        await broker.place(_order(quantity=1000.0))


async def test_an_unknown_asset_is_rejected(broker: AlpacaBroker) -> None:
    with pytest.raises(OrderRejectedError, match="422: asset 'NOPE' not found"):
        await broker.place(_order(symbol="NOPE"))


async def test_bad_credentials_are_terminal_and_never_shown(alpaca_url: str) -> None:
    async with connected(alpaca_url, secret_key="wrong-secret") as broker:
        with pytest.raises(TerminalError, match="401") as caught:
            await broker.place(_order())
    assert not isinstance(caught.value, OrderRejectedError)
    assert "wrong-secret" not in str(caught.value)
    config = AlpacaConfig(key_id=KEY_ID, secret_key=SECRET)
    assert SECRET not in repr(config)
    assert SECRET not in f"{config}"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (429, {"code": 42910000, "message": "rate limit exceeded"}),
        (500, {"code": 50010000, "message": "internal server error occurred"}),
        (503, {"message": "service unavailable"}),
    ],
)
async def test_rate_limits_and_server_errors_are_retryable(
    broker: AlpacaBroker, book: AlpacaBook, status: int, body: dict[str, Any]
) -> None:
    book.script.append((status, body))
    with pytest.raises(RetryableError, match=str(status)):
        await broker.place(_order())
    # The next delivery goes through.
    assert (await broker.place(_order())).status == "filled"


async def test_lookup_errors_are_mapped_too(broker: AlpacaBroker, book: AlpacaBook) -> None:
    book.script.append((502, {"message": "bad gateway"}))
    with pytest.raises(RetryableError):
        await broker.lookup(_order())


async def test_a_slow_alpaca_is_a_retryable_timeout(broker: AlpacaBroker, book: AlpacaBook) -> None:
    book.delay = 10 * FAST
    with pytest.raises(RetryableError, match="no answer within"):
        await broker.place(_order())


async def test_connection_refused_is_retryable() -> None:
    async with connected(f"http://127.0.0.1:{free_port()}") as broker:
        with pytest.raises(RetryableError, match=r"(?i)connect"):
            await broker.place(_order())


async def test_an_over_long_client_order_id_is_terminal_before_sending(
    broker: AlpacaBroker, book: AlpacaBook
) -> None:
    with pytest.raises(TerminalError, match="128"):
        await broker.place(_order("x" * 129))
    assert book.requests == []


# --- close ------------------------------------------------------------------------


def _deletes(book: AlpacaBook) -> list[str]:
    return [path for method, path, _ in book.requests if method == "DELETE"]


async def test_close_sells_the_whole_long_position_as_an_order(
    broker: AlpacaBroker, book: AlpacaBook
) -> None:
    await broker.place(_order("ab-1", quantity=10.0))
    await broker.place(_order("ab-2", quantity=5.0))
    result = await broker.place(_order("ab-close", side="close", quantity=0.0))
    assert (result.client_order_id, result.side, result.quantity) == ("ab-close", "sell", 15.0)
    assert result.status == "filled"
    assert book.requests[-2][:2] == ("GET", "/v2/positions/AAPL")
    assert _sent(book) == {
        "symbol": "AAPL",
        "qty": "15",
        "side": "sell",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": "ab-close",
    }
    assert "AAPL" not in book.positions
    assert _deletes(book) == []


async def test_close_a_short_crypto_position(broker: AlpacaBroker, book: AlpacaBook) -> None:
    book.positions["BTCUSD"] = -0.5
    result = await broker.place(_order("ab-close", symbol="BTC/USD", side="close", quantity=0))
    assert (result.side, result.quantity) == ("buy", 0.5)
    assert book.requests[-2][:2] == ("GET", "/v2/positions/BTCUSD")
    sent = _sent(book)
    assert (sent["symbol"], sent["side"], sent["qty"], sent["time_in_force"]) == (
        "BTC/USD",
        "buy",
        "0.5",
        "gtc",
    )
    assert "BTCUSD" not in book.positions


async def test_a_close_placed_twice_is_one_order(broker: AlpacaBroker, book: AlpacaBook) -> None:
    await broker.place(_order("ab-1", quantity=10.0))
    close = _order("ab-close", side="close", quantity=0.0)
    first = await broker.place(close)
    # The redelivery finds the position already gone, and the close order in the book.
    with pytest.raises(DuplicateOrderError, match="ab-close"):
        await broker.place(close)
    assert await broker.lookup(close) == first
    assert [o["client_order_id"] for o in book.orders.values()] == ["ab-1", "ab-close"]
    assert _deletes(book) == []


async def test_a_close_redelivered_before_it_fills_is_a_duplicate(
    broker: AlpacaBroker, book: AlpacaBook
) -> None:
    book.positions["AAPL"] = 7.0
    book.market_open = False  # the close waits for the open; the position is still there
    close = _order("ab-close", side="close", quantity=0.0)
    first = await broker.place(close)
    assert (first.status, first.side, first.quantity) == ("accepted", "sell", 7.0)
    with pytest.raises(DuplicateOrderError, match="client_order_id must be unique"):
        await broker.place(close)
    assert await broker.lookup(close) == first
    assert list(book.orders) == ["ab-close"]


async def test_close_without_a_position_is_rejected(broker: AlpacaBroker, book: AlpacaBook) -> None:
    with pytest.raises(OrderRejectedError, match="no open position in AAPL"):
        await broker.place(_order("ab-close", side="close", quantity=0.0))
    assert book.orders == {}
    assert _deletes(book) == []


async def test_close_errors_are_mapped_too(broker: AlpacaBroker, book: AlpacaBook) -> None:
    book.script.append((503, {"message": "service unavailable"}))
    with pytest.raises(RetryableError, match="503"):
        await broker.place(_order("ab-close", side="close", quantity=0.0))
    assert book.orders == {}


async def test_a_redirect_elsewhere_is_not_followed_and_the_keys_stay_home() -> None:
    seen: list[dict[str, str]] = []

    async def other_host(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"status": "accepted"})

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", other_host)
    async with serving_aiohttp(other) as elsewhere:

        async def moved(_: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(location=f"{elsewhere}/v2/orders")

        api = web.Application()
        api.router.add_post("/v2/orders", moved)
        async with serving_aiohttp(api) as base, connected(base) as broker:
            with pytest.raises(TerminalError, match=r"307.*base URL"):
                await broker.place(_order())
    assert seen == []  # neither the order nor APCA-API-SECRET-KEY left for the other host
