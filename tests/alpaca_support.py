"""What the Alpaca adapter tests share (tests/test_broker_alpaca_*.py): a local server
that speaks Alpaca's Trading API v2, the fixtures `book`, `alpaca_url` and `broker`, and
`connected` and `_order`.

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

from tests.support import serving_aiohttp
from worker.brokers.alpaca import AlpacaBroker, AlpacaConfig
from worker.brokers.base import Order

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


@pytest.fixture(name="book")
async def book_fixture() -> AsyncIterator[AlpacaBook]:
    state = AlpacaBook()
    yield state
    state.release.set()


@pytest.fixture(name="alpaca_url")
async def alpaca_url_fixture(book: AlpacaBook) -> AsyncIterator[str]:
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


@pytest.fixture(name="broker")
async def broker_fixture(alpaca_url: str) -> AsyncIterator[AlpacaBroker]:
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
