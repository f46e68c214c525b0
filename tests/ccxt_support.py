"""What the ccxt adapter tests share (tests/test_broker_ccxt_*.py): a local server that
speaks Binance spot's REST API, the fixtures `spot`, `binance_url` and `broker`, and
`connected` and `_order`.

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
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from tests.support import serving_aiohttp
from worker.brokers.base import Order
from worker.brokers.ccxt_broker import CcxtBroker, CcxtConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

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


@pytest.fixture(name="spot")
async def spot_fixture() -> AsyncIterator[BinanceSpot]:
    state = BinanceSpot()
    yield state
    state.release.set()


@pytest.fixture(name="binance_url")
async def binance_url_fixture(spot: BinanceSpot) -> AsyncIterator[str]:
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


@pytest.fixture(name="broker")
async def broker_fixture(binance_url: str) -> AsyncIterator[CcxtBroker]:
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
