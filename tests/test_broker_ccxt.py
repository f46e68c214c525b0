"""The ccxt adapter against a local server that speaks Binance spot's REST API.

ccxt's own `binance` client talks to it (its `urls['api']` moved to 127.0.0.1). The
server serves the endpoints ccxt calls (`/api/v3/exchangeInfo` with two markets,
`/api/v3/time`, `/api/v3/order` POST and GET, `/api/v3/account`), checks the API key
header and the HMAC-SHA256 signature of every signed request, keeps
`newClientOrderId` unique among open orders only (as Binance documents it), and
answers with Binance's error bodies: `{"code": -2010, "msg": "Duplicate order sent."}`,
`{"code": -1121, "msg": "Invalid symbol."}`, -2015, -1022, 429 and 5xx.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from tests.support import free_port, serving_aiohttp
from worker.brokers.base import Broker, Order
from worker.brokers.ccxt_broker import CcxtBroker, CcxtConfig
from worker.errors import (
    DuplicateOrderError,
    OrderRejectedError,
    RetryableError,
    TerminalError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

API_KEY = "binance-test-key"
SECRET = "binance-secret-never-logged"
FAST = 0.5  # seconds: the client timeout in these tests
PRICES = {"BTCUSDT": 97000.0, "ETHUSDT": 3500.0}
ORDER_TYPES = ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT",
               "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"]  # fmt: skip


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
        if request.path in ("/api/v3/order", "/api/v3/account"):
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
        filled = params["type"] == "MARKET"
        if filled:
            sign = 1 if params["side"] == "BUY" else -1
            self.balances[base] += sign * qty
            self.balances[quote] -= sign * qty * price
        order = self._order(params, price if filled else None)
        self.orders.append(order)
        fills = [{"price": f"{price:.8f}", "qty": params["quantity"], "commission": "0.00000000",
                  "commissionAsset": base, "tradeId": 7}] if filled else []  # fmt: skip
        return web.json_response({**order, "transactTime": order["time"], "fills": fills})

    def _order(self, params: dict[str, str], fill: float | None) -> dict[str, Any]:
        now = int(time.time() * 1000)
        qty = params["quantity"]
        return {
            "symbol": params["symbol"], "orderId": 28000 + len(self.orders), "orderListId": -1,
            "clientOrderId": params["newClientOrderId"],
            "price": params.get("price", "0.00000000"), "origQty": qty,
            "executedQty": qty if fill is not None else "0.00000000",
            "cummulativeQuoteQty": f"{float(qty) * fill:.8f}" if fill else "0.00000000",
            "status": "FILLED" if fill is not None else "NEW",
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


# --- close ------------------------------------------------------------------------


async def test_close_sells_the_free_base_balance(broker: CcxtBroker, spot: BinanceSpot) -> None:
    spot.balances["BTC"] = 0.123456789
    result = await broker.place(_order("ab-close", side="close", quantity=0.0))
    assert (result.side, result.status, result.quantity) == ("sell", "filled", 0.12345)
    sent = spot.posts[-1]
    assert (sent["side"], sent["type"], sent["quantity"]) == ("SELL", "MARKET", "0.12345")
    assert sent["newClientOrderId"] == "ab-close"
    # A redelivered close finds the sale instead of selling again.
    with pytest.raises(DuplicateOrderError):
        await broker.place(_order("ab-close", side="close", quantity=0.0))
    found = await broker.lookup(_order("ab-close", side="close", quantity=0.0))
    assert found is not None and (found.side, found.quantity) == ("sell", 0.12345)


async def test_close_without_a_balance_is_rejected(broker: CcxtBroker, spot: BinanceSpot) -> None:
    with pytest.raises(OrderRejectedError, match="no free BTC"):
        await broker.place(_order("ab-close", side="close", quantity=0.0))
    assert spot.posts == []
