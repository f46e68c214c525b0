"""The ccxt adapter against a local server that speaks Binance spot's REST API.

ccxt's own `binance` client talks to it (its `urls['api']` moved to 127.0.0.1). The
server serves the endpoints ccxt calls (`/api/v3/exchangeInfo` with two markets,
`/api/v3/time`, `/api/v3/order` POST and GET, `/api/v3/account`, and the order and
trade history a close reads: `/api/v3/allOrders`, `/api/v3/myTrades`, newest first
up to `endTime`, at most `limit` a page), checks the API key header and the HMAC-SHA256
signature of every signed request, keeps `newClientOrderId` unique among open orders
only (as Binance documents it), and answers with Binance's error bodies:
`{"code": -2010, "msg": "Duplicate order sent."}`, `{"code": -1121, "msg": "Invalid
symbol."}`, -2015, -1022, 429 and 5xx. A filled order is two trades (two makers), its
commission charged in the received asset at `fee_rate`, as Binance does without BNB.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from ops.platform.accounts import Account, CcxtSettings
from tests.support import free_port, serving_aiohttp
from worker.accounts import make_broker
from worker.brokers import ccxt_ledger
from worker.brokers.base import Broker, Order
from worker.brokers.ccxt_broker import CcxtBroker, CcxtConfig
from worker.brokers.ccxt_ledger import CLIENT_ORDER_ID
from worker.errors import (
    DuplicateOrderError,
    OrderRejectedError,
    RetryableError,
    TerminalError,
)
from worker.execute import client_order_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")
API_KEY = "binance-test-key"
SECRET = "binance-secret-never-logged"
FAST = 0.5  # seconds: the client timeout in these tests
PRICES = {"BTCUSDT": 97000.0, "ETHUSDT": 3500.0}
ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT",
               "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"]  # fmt: skip


SIGNED = ("/api/v3/order", "/api/v3/account", "/api/v3/allOrders", "/api/v3/myTrades",
          "/api/v3/openOrders")  # fmt: skip


def _error(status: int, code: int, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)


def _market(symbol: str, base: str, quote: str) -> dict[str, Any]:
    """One symbol of `/api/v3/exchangeInfo`, with the filters ccxt reads precision from."""
    return {
        "symbol": symbol, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
        "quoteAsset": quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": ORDER_TYPES, "icebergAllowed": True, "ocoAllowed": True,
        "otoAllowed": True, "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True,
        "cancelReplaceAllowed": True, "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.01000000",
             "maxPrice": "1000000.00000000", "tickSize": "0.01000000"},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000",
             "stepSize": "0.00001000"},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False,
             "avgPriceMins": 5},
        ],
        "permissions": [], "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER"],
    }  # fmt: skip


@dataclass
class BinanceSpot:
    """A local Binance spot API: one account, a tiny market list, Binance's answers."""

    balances: dict[str, float] = field(
        default_factory=lambda: {"BTC": 0.0, "ETH": 0.0, "USDT": 10_000.0}
    )
    orders: list[dict[str, Any]] = field(default_factory=list)
    trades: list[dict[str, Any]] = field(default_factory=list)
    fee_rate: float = 0.0
    # Client order id -> the quantity that fills (a market order then ends EXPIRED).
    fill_only: dict[str, float] = field(default_factory=dict)
    page: int = 1000  # the most entries one history page holds, whatever `limit` asks
    history: list[str] = field(default_factory=list)  # paths of history requests
    clock: int = 0  # the last order's time: every order gets its own millisecond
    delisted: set[str] = field(default_factory=set)
    posts: list[dict[str, str]] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)
    # Scripted answers: (method, path, status, body); str bodies are sent as text.
    script: list[tuple[str, str, int, dict[str, Any] | str]] = field(default_factory=list)
    # A slow endpoint: (method, path) answers after `delay` or when released.
    slow: tuple[str, str] | None = None
    delay: float = 0.0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.gate])
        app.router.add_get("/api/v3/ping", self.ping)
        app.router.add_get("/api/v3/time", self.time)
        app.router.add_get("/api/v3/exchangeInfo", self.exchange_info)
        app.router.add_post("/api/v3/order", self.new_order)
        app.router.add_get("/api/v3/order", self.query_order)
        app.router.add_get("/api/v3/account", self.account)
        app.router.add_get("/api/v3/allOrders", self.all_orders)
        app.router.add_get("/api/v3/myTrades", self.my_trades)
        app.router.add_get("/api/v3/openOrders", self.open_orders)
        return app

    @web.middleware
    async def gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        for entry in self.script:
            method, path, status, body = entry
            if (request.method, request.path) == (method, path):
                self.script.remove(entry)
                if isinstance(body, str):
                    return web.Response(status=status, text=body)
                return web.json_response(body, status=status)
        if self.slow == (request.method, request.path):
            await asyncio.wait_for(self.release.wait(), self.delay)
        if request.path in SIGNED:
            refused = await self._refuse_unsigned(request)
            if refused is not None:
                return refused
        return await handler(request)

    async def _refuse_unsigned(self, request: web.Request) -> web.Response | None:
        """Binance's checks of a SIGNED endpoint: key header, HMAC of the query, time."""
        if request.headers.get("X-MBX-APIKEY") != API_KEY:
            return _error(401, -2015, "Invalid API-key, IP, or permissions for action.")
        raw = await request.text() if request.method == "POST" else request.query_string
        payload, _, given = raw.rpartition("&signature=")
        mac = hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, given):
            return _error(400, -1022, "Signature for this request is not valid.")
        params = dict(parse_qsl(payload))
        window = int(params.get("recvWindow", "5000"))
        if abs(time.time() * 1000 - int(params.get("timestamp", "0"))) > window:
            return _error(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        return None

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})

    async def exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": int(time.time() * 1000),
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": [_market("BTCUSDT", "BTC", "USDT"), _market("ETHUSDT", "ETH", "USDT")],
            }
        )

    async def account(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0,
                "sellerCommission": 0, "canTrade": True, "canWithdraw": True,
                "canDeposit": True, "brokered": False, "requireSelfTradePrevention": False,
                "preventSor": False, "updateTime": int(time.time() * 1000),
                "accountType": "SPOT", "permissions": ["SPOT"], "uid": 354937868,
                "balances": [
                    {"asset": asset, "free": f"{free:.8f}", "locked": "0.00000000"}
                    for asset, free in self.balances.items()
                ],
            }
        )  # fmt: skip

    async def new_order(self, request: web.Request) -> web.Response:
        params = dict(parse_qsl(await request.text()))
        self.posts.append(params)
        symbol = params["symbol"]
        if symbol not in PRICES or symbol in self.delisted:
            return _error(400, -1121, "Invalid symbol.")
        coid = params["newClientOrderId"]
        if any(o["clientOrderId"] == coid and o["status"] == "NEW" for o in self.orders):
            return _error(400, -2010, "Duplicate order sent.")
        qty, price = float(params["quantity"]), PRICES[symbol]
        base, quote = symbol[:-4], symbol[-4:]
        cost = qty * float(params.get("price", price))
        if (params["side"] == "BUY" and cost > self.balances[quote]) or (
            params["side"] == "SELL" and qty > self.balances[base]
        ):
            return _error(400, -2010, "Account has insufficient balance for requested action.")
        order, fills = self.execute(params)
        return web.json_response({**order, "transactTime": order["time"], "fills": fills})

    def execute(self, params: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Book the order: a market order fills (as two trades) at once, a limit one rests."""
        symbol, coid = params["symbol"], params["newClientOrderId"]
        price, base, quote = PRICES[symbol], symbol[:-4], symbol[-4:]
        wanted = float(params["quantity"])
        filled = self.fill_only.get(coid, wanted) if params["type"] == "MARKET" else 0.0
        order = self._order(params, price if filled else None, filled, wanted)
        self.orders.append(order)
        fills = []
        halves = [round(filled / 2, 8), round(filled - round(filled / 2, 8), 8)]
        for qty in halves if filled else []:
            buy = params["side"] == "BUY"
            fee = round(qty * (1 if buy else price) * self.fee_rate, 8)
            self.balances[base] += qty - fee if buy else -qty
            self.balances[quote] += -qty * price if buy else qty * price - fee
            trade = {
                "symbol": symbol, "id": 7000 + len(self.trades), "orderId": order["orderId"],
                "orderListId": -1, "price": f"{price:.8f}", "qty": f"{qty:.8f}",
                "quoteQty": f"{qty * price:.8f}", "commission": f"{fee:.8f}",
                "commissionAsset": base if buy else quote, "time": order["time"],
                "isBuyer": buy, "isMaker": False, "isBestMatch": True,
            }  # fmt: skip
            self.trades.append(trade)
            fills.append({k: trade[k] for k in ("price", "qty", "commission", "commissionAsset")})
        return order, fills

    def outside(self, side: str, qty: float, symbol: str = "BTCUSDT") -> None:
        """An order placed by hand on the exchange's website: not alertbridge's."""
        coid = f"web_{len(self.orders)}f2c9a1b7e4d04c5e8a6b3d2e1f0a9b8c"  # Binance's own shape
        params = {"symbol": symbol, "side": side, "type": "MARKET", "quantity": str(qty)}
        self.execute({**params, "newClientOrderId": coid})

    def _order(
        self, params: dict[str, str], fill: float | None, filled: float, wanted: float
    ) -> dict[str, Any]:
        self.clock = now = max(int(time.time() * 1000), self.clock + 1)
        qty = params["quantity"]
        status = "NEW" if fill is None else "FILLED" if filled == wanted else "EXPIRED"
        return {
            "symbol": params["symbol"], "orderId": 28000 + len(self.orders), "orderListId": -1,
            "clientOrderId": params["newClientOrderId"],
            "price": params.get("price", "0.00000000"), "origQty": qty,
            "executedQty": f"{filled:.8f}",
            "cummulativeQuoteQty": f"{filled * fill:.8f}" if fill else "0.00000000",
            "status": status,
            "timeInForce": params.get("timeInForce", "GTC"), "type": params["type"],
            "side": params["side"], "stopPrice": params.get("stopPrice", "0.00000000"),
            "icebergQty": "0.00000000", "time": now, "updateTime": now, "isWorking": True,
            "workingTime": now, "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }  # fmt: skip

    async def query_order(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        coid = request.query.get("origClientOrderId")
        found = [
            o for o in self.orders
            if o["symbol"] == request.query.get("symbol") and o["clientOrderId"] == coid
        ]  # fmt: skip
        if not found:
            return _error(400, -2013, "Order does not exist.")
        return web.json_response(found[-1])

    async def all_orders(self, request: web.Request) -> web.Response:
        return web.json_response(self._newest(request, self.orders))

    async def my_trades(self, request: web.Request) -> web.Response:
        return web.json_response(self._newest(request, self.trades))

    async def open_orders(self, request: web.Request) -> web.Response:
        self.history.append(request.path)
        symbol = request.query["symbol"]
        return web.json_response(
            [o for o in self.orders if o["symbol"] == symbol and o["status"] == "NEW"]
        )

    def _newest(self, request: web.Request, entries: list[dict[str, Any]]) -> list[Any]:
        """Binance's history pages: the newest `limit` entries up to `endTime`, oldest first."""
        self.history.append(request.path)
        query = request.query
        end = int(query.get("endTime", "9" * 15))
        limit = min(int(query.get("limit", "500")), 1000, self.page)
        mine = [e for e in entries if e["symbol"] == query["symbol"] and e["time"] <= end]
        return mine[-limit:]


@pytest.fixture
async def spot() -> AsyncIterator[BinanceSpot]:
    state = BinanceSpot()
    yield state
    state.release.set()


@pytest.fixture
async def binance_url(spot: BinanceSpot) -> AsyncIterator[str]:
    async with serving_aiohttp(spot.app()) as url:
        yield url


@asynccontextmanager
async def connected(url: str, **config: Any) -> AsyncIterator[CcxtBroker]:
    values: dict[str, Any] = {
        "exchange": "binance", "api_key": API_KEY, "secret": SECRET, "timeout": FAST,
    }  # fmt: skip
    values.update(config)
    broker = CcxtBroker(CcxtConfig(api_url=url, **values))
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
async def broker(binance_url: str) -> AsyncIterator[CcxtBroker]:
    async with connected(binance_url) as adapter:
        yield adapter


def _order(coid: str = "ab-1", **fields: Any) -> Order:
    values: dict[str, Any] = {
        "client_order_id": coid,
        "account": "binance-spot",
        "symbol": "BTC/USDT",
        "side": "buy",
        "quantity": 0.01,
        "order_type": "market",
    }
    values.update(fields)
    return Order(**values)


# --- success ----------------------------------------------------------------------


def test_the_adapter_is_a_broker(broker: CcxtBroker) -> None:
    adapter: Broker = broker  # mypy checks the protocol
    assert adapter.name == "ccxt:binance"


async def test_market_buy_fills(broker: CcxtBroker, spot: BinanceSpot) -> None:
    result = await broker.place(_order())
    assert (result.client_order_id, result.status, result.side) == ("ab-1", "filled", "buy")
    assert (result.quantity, result.fill_price) == (0.01, 97000.0)
    assert result.broker_order_id == "28000"
    sent = spot.posts[-1]
    assert (sent["symbol"], sent["side"], sent["type"]) == ("BTCUSDT", "BUY", "MARKET")
    assert (sent["quantity"], sent["newClientOrderId"]) == ("0.01", "ab-1")
    assert "price" not in sent
    assert spot.balances["BTC"] == pytest.approx(0.01)
    assert broker.name == "ccxt:binance"


async def test_limit_sell_is_open_at_its_price(broker: CcxtBroker, spot: BinanceSpot) -> None:
    spot.balances["ETH"] = 2.0
    result = await broker.place(
        _order(symbol="ETH/USDT", side="sell", quantity=1.5, order_type="limit", limit_price=3600)
    )
    assert (result.status, result.side, result.quantity, result.fill_price) == (
        "open",
        "sell",
        1.5,
        None,
    )
    sent = spot.posts[-1]
    assert (sent["type"], sent["price"], sent["timeInForce"]) == ("LIMIT", "3600", "GTC")


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(None, {"type": "STOP_LOSS", "stopPrice": "99000"}),
     (99100.0, {"type": "STOP_LOSS_LIMIT", "stopPrice": "99000", "price": "99100"})],
)  # fmt: skip
async def test_stop_orders(
    broker: CcxtBroker, spot: BinanceSpot, limit: float | None, expected: dict[str, str]
) -> None:
    result = await broker.place(_order(order_type="stop", stop_price=99000.0, limit_price=limit))
    assert result.status == "open"
    sent = spot.posts[-1]
    assert {k: sent[k] for k in expected} == expected


async def test_take_profit_and_stop_loss_are_refused_on_binance_spot(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    with pytest.raises(OrderRejectedError, match="take-profit or stop-loss"):
        await broker.place(_order(take_profit=99000.0, stop_loss=95000.0))
    assert spot.posts == []


async def test_sandbox_mode_with_the_url_override(binance_url: str) -> None:
    async with connected(binance_url, sandbox=True) as broker:
        assert (await broker.place(_order())).status == "filled"


async def test_a_stop_without_its_price_is_rejected_not_sent_as_market(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    with pytest.raises(OrderRejectedError, match="stop price"):
        await broker.place(_order(order_type="stop"))
    assert spot.posts == []


async def test_spot_reports_no_equity(broker: CcxtBroker) -> None:
    assert await broker.equity() is None


def test_an_unknown_exchange_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="no-such-exchange"):
        CcxtBroker(CcxtConfig(exchange="no-such-exchange", api_key="k", secret="s"))


# --- duplicates and lookup --------------------------------------------------------


async def test_a_known_client_order_id_is_a_duplicate_that_lookup_finds(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    first = await broker.place(_order(order_type="limit", limit_price=90000.0))
    with pytest.raises(DuplicateOrderError, match="ab-1"):
        await broker.place(_order(order_type="limit", limit_price=90000.0))
    found = await broker.lookup(_order(order_type="limit", limit_price=90000.0))
    assert found is not None
    assert (found.broker_order_id, found.status, found.side, found.quantity) == (
        first.broker_order_id,
        "open",
        "buy",
        0.01,
    )
    assert len(spot.posts) == 1
    assert await broker.lookup(_order("ab-unknown")) is None


async def test_binance_duplicate_order_sent_is_a_duplicate(binance_url: str) -> None:
    async with connected(binance_url, check_before_place=False) as broker:
        await broker.place(_order(order_type="limit", limit_price=90000.0))
        with pytest.raises(DuplicateOrderError, match="Duplicate order sent"):
            await broker.place(_order(order_type="limit", limit_price=90000.0))
        assert await broker.lookup(_order()) is not None


async def test_a_filled_order_is_not_placed_twice(binance_url: str, spot: BinanceSpot) -> None:
    # Binance takes a filled order's client id again: only the check before placing
    # keeps a redelivered market order from filling twice.
    async with connected(binance_url, check_before_place=False) as unchecked:
        await unchecked.place(_order())
        await unchecked.place(_order())
    assert len(spot.orders) == 2
    async with connected(binance_url) as broker:
        await broker.place(_order("ab-2"))
        with pytest.raises(DuplicateOrderError):
            await broker.place(_order("ab-2"))
    assert len(spot.orders) == 3


async def test_another_process_finds_the_order_by_client_id_and_symbol(
    binance_url: str, broker: CcxtBroker, spot: BinanceSpot
) -> None:
    order = _order(symbol="ETH/USDT", quantity=0.5)
    placed = await broker.place(order)
    # A fresh instance (another worker process, or this one after a restart) never saw
    # the order: the symbol comes with the order, not from memory.
    async with connected(binance_url) as other:
        found = await other.lookup(order)
        assert found is not None
        assert (found.client_order_id, found.broker_order_id, found.status) == (
            "ab-1",
            placed.broker_order_id,
            "filled",
        )
        assert (found.side, found.quantity, found.fill_price) == ("buy", 0.5, 3500.0)
        # The check before placing goes through the same lookup.
        with pytest.raises(DuplicateOrderError, match="ab-1"):
            await other.place(order)
        assert await other.lookup(_order("ab-1", symbol="BTC/USDT")) is None
    queries = [p for p in spot.queries if p.get("origClientOrderId") == "ab-1"]
    assert {q["symbol"] for q in queries} == {"ETHUSDT", "BTCUSDT"}
    assert len(spot.posts) == 1


async def test_lookup_errors_are_mapped(broker: CcxtBroker, spot: BinanceSpot) -> None:
    spot.script.append(("GET", "/api/v3/order", 503, "Service Unavailable"))
    with pytest.raises(RetryableError):
        await broker.lookup(_order())


# --- errors -----------------------------------------------------------------------


async def test_insufficient_balance_is_rejected(broker: CcxtBroker) -> None:
    with pytest.raises(OrderRejectedError, match="InsufficientFunds"):
        await broker.place(_order(quantity=1.0))


async def test_binance_invalid_symbol_is_rejected(broker: CcxtBroker, spot: BinanceSpot) -> None:
    spot.delisted.add("ETHUSDT")
    with pytest.raises(OrderRejectedError, match=r"BadSymbol: .*-1121"):
        await broker.place(_order(symbol="ETH/USDT"))


async def test_a_symbol_ccxt_does_not_know_is_rejected(broker: CcxtBroker) -> None:
    with pytest.raises(OrderRejectedError, match="BadSymbol"):
        await broker.place(_order(symbol="NOPE/USDT"))


@pytest.mark.parametrize(
    ("key", "secret", "code"),
    [("wrong-key", SECRET, "-2015"), (API_KEY, "wrong-secret", "-1022")],
)
async def test_bad_credentials_are_terminal_and_never_shown(
    binance_url: str, key: str, secret: str, code: str
) -> None:
    async with connected(binance_url, api_key=key, secret=secret) as broker:
        with pytest.raises(TerminalError, match=code) as caught:
            await broker.place(_order())
    assert not isinstance(caught.value, OrderRejectedError)
    assert secret not in str(caught.value)
    assert SECRET not in repr(CcxtConfig(exchange="binance", api_key=API_KEY, secret=SECRET))


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (429, {"code": -1003, "msg": "Too many requests; current limit of IP(127.0.0.1) is "
                                    "6000 requests per minute."}),
        (500, {"code": -1001, "msg": "Internal error; unable to process your request. "
                                    "Please try again."}),
        (503, "Service Unavailable"),
    ],
)  # fmt: skip
async def test_rate_limits_and_server_errors_are_retryable(
    broker: CcxtBroker, spot: BinanceSpot, status: int, body: dict[str, Any] | str
) -> None:
    spot.script.append(("POST", "/api/v3/order", status, body))
    with pytest.raises(RetryableError):
        await broker.place(_order())
    assert (await broker.place(_order())).status == "filled"


async def test_markets_that_fail_to_load_are_loaded_again(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    spot.script.append(("GET", "/api/v3/exchangeInfo", 502, "Bad Gateway"))
    with pytest.raises(RetryableError, match="ExchangeNotAvailable"):
        await broker.place(_order())
    assert (await broker.place(_order())).status == "filled"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_slow_exchange_is_a_retryable_timeout(
    broker: CcxtBroker, spot: BinanceSpot, method: str
) -> None:
    # GET: the check before placing; POST: the order itself.
    spot.slow, spot.delay = (method, "/api/v3/order"), 10 * FAST
    with pytest.raises(RetryableError, match=f"RequestTimeout: binance {method}") as caught:
        await broker.place(_order())
    # ccxt names the signed URL (a GET's query string) in its message: no signature shown.
    assert re.search(r"signature=(?!\*\*\*)", str(caught.value)) is None
    assert caught.value.__cause__ is None  # ccxt's own message is not chained along
    if method == "GET":
        assert "signature=***" in str(caught.value)


async def test_connection_refused_is_retryable() -> None:
    async with connected(f"http://127.0.0.1:{free_port()}") as broker:
        with pytest.raises(RetryableError):
            await broker.place(_order())


# --- close -------------------------------------------------------------------------
#
# A close sells what alertbridge's own orders (client ids of `client_order_id`'s shape)
# bought and still hold, read from the exchange's order and trade history.


def _ab(alert_id: str) -> str:
    """The client order id the worker gives an alert of the test account."""
    return client_order_id("binance-spot", alert_id)


def _close(alert_id: str = "close-1") -> Order:
    return _order(_ab(alert_id), side="close", quantity=0.0)


async def _trade(broker: CcxtBroker, alert_id: str, side: str, qty: float, **fields: Any) -> None:
    await broker.place(_order(_ab(alert_id), side=side, quantity=qty, **fields))


def _sold(spot: BinanceSpot) -> list[tuple[str, str]]:
    """(quantity, client order id) of every sell the exchange was sent."""
    return [(p["quantity"], p["newClientOrderId"]) for p in spot.posts if p["side"] == "SELL"]


def test_alertbridge_client_order_ids_are_what_the_ledger_recognises() -> None:
    assert CLIENT_ORDER_ID.fullmatch(client_order_id("any account", "any alert id"))
    assert not CLIENT_ORDER_ID.fullmatch("web_0f2c9a1b7e4d04c5e8a6b3d2e1f0a9b8c")
    assert not CLIENT_ORDER_ID.fullmatch("x-R4BD3S82" + "0" * 22)  # ccxt's own default


async def test_close_sells_only_what_alertbridge_bought(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    spot.balances["BTC"] = 1.0  # deposited
    spot.outside("BUY", 0.05)  # bought by hand on the website
    await _trade(broker, "b1", "buy", 0.01)
    await _trade(broker, "b2", "buy", 0.02)
    await _trade(broker, "s1", "sell", 0.005)
    await _trade(broker, "e1", "buy", 0.1, symbol="ETH/USDT")  # another symbol
    spot.outside("SELL", 0.02)  # sold by hand: the hand-bought coins, not alertbridge's
    result = await broker.place(_close())
    assert (result.side, result.status, result.quantity) == ("sell", "filled", 0.025)
    assert _sold(spot)[-1] == ("0.025", _ab("close-1"))
    assert spot.balances["BTC"] == pytest.approx(1.03)  # 1 + 0.05 - 0.02 stay
    assert spot.balances["ETH"] == pytest.approx(0.1)
    assert {"/api/v3/allOrders", "/api/v3/myTrades"} <= set(spot.history)


async def test_a_history_longer_than_a_page_is_read_to_its_start(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    spot.page = 3  # three orders or trades a page: every list takes several
    for n in range(5):
        await _trade(broker, f"b{n}", "buy", 0.01)
        spot.outside("BUY", 0.005)
    assert (await broker.place(_close())).quantity == 0.05
    assert spot.history.count("/api/v3/allOrders") >= 4
    assert spot.history.count("/api/v3/myTrades") >= 4


async def test_a_history_longer_than_the_page_limit_sells_nothing(
    broker: CcxtBroker, spot: BinanceSpot, monkeypatch: pytest.MonkeyPatch
) -> None:
    spot.page = 2
    for n in range(3):
        await _trade(broker, f"b{n}", "buy", 0.01)
    monkeypatch.setattr(ccxt_ledger, "MAX_PAGES", 1)
    with pytest.raises(TerminalError, match=r"more than 1 pages of BTC/USDT history.*whole_bal"):
        await broker.place(_close())
    assert _sold(spot) == []


async def test_the_ledger_is_capped_by_the_free_balance(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    await _trade(broker, "b1", "buy", 0.05)
    spot.outside("SELL", 0.03)  # the owner sold some by hand
    assert (await broker.place(_close())).quantity == 0.02
    assert spot.balances["BTC"] == pytest.approx(0.0)


async def test_fees_charged_in_the_base_asset_are_not_sold(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    spot.fee_rate = 0.001  # 0.1 %, taken from the bought BTC
    await _trade(broker, "b1", "buy", 0.01)
    await _trade(broker, "b2", "buy", 0.02)
    assert spot.balances["BTC"] == pytest.approx(0.02997)
    await _trade(broker, "s1", "sell", 0.01)  # a sale's fee is in USDT
    spot.balances["BTC"] += 1.0  # and coins from elsewhere
    assert (await broker.place(_close())).quantity == 0.01997
    assert _sold(spot)[-1][0] == "0.01997"
    assert spot.balances["BTC"] == pytest.approx(1.0)


async def test_partial_fills_count_what_filled(broker: CcxtBroker, spot: BinanceSpot) -> None:
    spot.balances["BTC"] = 1.0
    spot.fill_only[_ab("b1")] = 0.004  # of 0.01: the rest expired unfilled
    result = await broker.place(_order(_ab("b1"), quantity=0.01))
    assert (result.status, result.quantity) == ("expired", 0.01)
    await _trade(broker, "b2", "buy", 0.02, order_type="limit", limit_price=90000.0)  # resting
    assert (await broker.place(_close())).quantity == 0.004
    assert spot.balances["BTC"] == pytest.approx(1.0)


async def test_close_with_nothing_bought_is_terminal_and_sends_nothing(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    spot.balances["BTC"] = 2.0
    spot.outside("BUY", 0.5)
    with pytest.raises(TerminalError, match="nothing bought through alertbridge to close for "
                       "BTC/USDT") as caught:  # fmt: skip
        await broker.place(_close())
    assert not isinstance(caught.value, OrderRejectedError)
    assert _sold(spot) == []


async def test_a_second_close_finds_nothing_left(broker: CcxtBroker, spot: BinanceSpot) -> None:
    spot.balances["BTC"] = 1.0
    await _trade(broker, "b1", "buy", 0.01)
    assert (await broker.place(_close("close-1"))).quantity == 0.01
    with pytest.raises(TerminalError, match="nothing bought through alertbridge"):
        await broker.place(_close("close-2"))
    assert _sold(spot) == [("0.01", _ab("close-1"))]
    assert spot.balances["BTC"] == pytest.approx(1.0)


async def test_held_coins_that_are_no_longer_free_are_rejected(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    await _trade(broker, "b1", "buy", 0.01)
    spot.outside("SELL", 0.01)
    with pytest.raises(OrderRejectedError, match="no free BTC to sell to close BTC/USDT"):
        await broker.place(_close())
    assert _sold(spot) == []


@pytest.mark.parametrize("check_before_place", [True, False])
async def test_a_redelivered_close_does_not_sell_again(
    binance_url: str, spot: BinanceSpot, check_before_place: bool
) -> None:
    # Checked: the lookup by client order id finds it. Unchecked (or an exchange whose
    # lookup cannot find it): the close is among the orders its own ledger reads.
    spot.balances["BTC"] = 1.0
    async with connected(binance_url, check_before_place=check_before_place) as broker:
        await _trade(broker, "b1", "buy", 0.03)
        first = await broker.place(_close())
        with pytest.raises(DuplicateOrderError, match=_ab("close-1")):
            await broker.place(_close())
        found = await broker.lookup(_close())
    assert found is not None
    assert (found.broker_order_id, found.side, found.quantity) == (
        first.broker_order_id,
        "sell",
        0.03,
    )
    assert _sold(spot) == [("0.03", _ab("close-1"))]
    assert spot.balances["BTC"] == pytest.approx(1.0)


async def test_close_whole_balance_sells_every_free_coin(
    binance_url: str, spot: BinanceSpot
) -> None:
    spot.balances["BTC"] = 0.123456789
    async with connected(binance_url, close_whole_balance=True) as broker:
        await _trade(broker, "b1", "buy", 0.01)
        result = await broker.place(_close())
        assert (result.side, result.status, result.quantity) == ("sell", "filled", 0.13345)
        assert _sold(spot)[-1] == ("0.13345", _ab("close-1"))
        assert spot.history == []  # no ledger read
        with pytest.raises(OrderRejectedError, match="minimum amount precision"):
            await broker.place(_close("close-2"))  # 0.000006789 BTC left: below a lot
    assert len(_sold(spot)) == 1


async def test_an_exchange_without_fetch_orders_reads_its_closed_and_open_orders(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    await _trade(broker, "b1", "buy", 0.02)
    await _trade(broker, "b2", "buy", 0.01, order_type="limit", limit_price=90000.0)
    broker._exchange.has["fetchOrders"] = False  # ccxt's capability flags of another exchange
    assert (await broker.place(_close())).quantity == 0.02
    assert "/api/v3/openOrders" in spot.history


async def test_an_exchange_without_order_history_cannot_close_what_it_bought(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    await _trade(broker, "b1", "buy", 0.02)
    for method in ("fetchOrders", "fetchCanceledAndClosedOrders", "fetchClosedOrders"):
        broker._exchange.has[method] = False
    with pytest.raises(TerminalError, match=r"no order history in ccxt.*close_whole_balance"):
        await broker.place(_close())
    assert _sold(spot) == []


async def test_the_accounts_file_option_reaches_the_adapter(
    binance_url: str, spot: BinanceSpot
) -> None:
    spot.balances["BTC"] = 0.5
    env = {"K": API_KEY, "S": SECRET}
    for whole, sold in ((False, None), (True, "0.5")):
        settings = CcxtSettings(exchange="binance", api_key_env="K", secret_env="S",
                                api_url=binance_url, close_whole_balance=whole)  # fmt: skip
        broker = make_broker(Account(broker=settings), env, paper_db="unused.db")
        try:
            if sold is None:
                with pytest.raises(TerminalError, match="nothing bought"):
                    await broker.place(_close(f"close-{whole}"))
            else:
                await broker.place(_close(f"close-{whole}"))
        finally:
            await broker.close()
    assert [q for q, _ in _sold(spot)] == ["0.5"]


CONFIG = """
[accounts.crypto]
broker = "ccxt"
ccxt = {{ exchange = "binance", api_key_env = "BINANCE_KEY", secret_env = "BINANCE_SECRET"{extra} }}
"""


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        ("", 0, "1 account(s) OK"),
        (", close_whole_balance = true", 0, "1 account(s) OK"),
        (", close_whole_balance = false", 0, "1 account(s) OK"),
        (', close_whole_balance = "yes"', 2, "ccxt.close_whole_balance"),
        (", close_whole_balanc = true", 2, "close_whole_balanc"),
    ],
)
def test_config_check_on_close_whole_balance(
    tmp_path: Path, extra: str, code: int, needle: str
) -> None:
    path = tmp_path / "alertbridge.toml"
    path.write_text(CONFIG.format(extra=extra))
    env = {**os.environ, "ALERTBRIDGE_CONFIG": str(path),
           "BINANCE_KEY": "k" * 16, "BINANCE_SECRET": "s" * 16}  # fmt: skip
    done = subprocess.run([ALERTBRIDGE, "config", "check"], env=env, capture_output=True,
                          text=True, check=False, timeout=30)  # fmt: skip
    assert done.returncode == code, done.stderr
    assert needle in (done.stdout if code == 0 else done.stderr)
