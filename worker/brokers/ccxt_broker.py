"""Crypto exchanges through ccxt's async client: spot markets, sandbox where one exists.

How an alertbridge order becomes a ccxt `create_order(symbol, type, side, amount, price,
params)` (symbols are ccxt's unified ones, e.g. `BTC/USDT`; amounts in the base asset):

    alertbridge                ccxt
    -------------------------  ---------------------------------------------------------
    side buy / sell            side buy / sell, amount = quantity
    side close (spot only)     sell, at market, what alertbridge bought of the base
                               asset and still holds (worker/brokers/ccxt_ledger.py: the
                               fills of its own orders, net of base-asset fees), capped by
                               the free balance; quantity is ignored. Coins bought outside
                               alertbridge stay. With close_whole_balance: the whole free
                               balance of the base asset (fetch_balance)
    market                     type market, no price
    limit                      type limit, price = limit_price
    stop                       type market, params triggerPrice = stop_price
                               (Binance spot: STOP_LOSS)
    stop with a limit_price    type limit, price = limit_price, params triggerPrice
                               (Binance spot: STOP_LOSS_LIMIT)
    take_profit / stop_loss    params takeProfit / stopLoss {triggerPrice} where the
                               exchange has createOrderWithTakeProfitAndStopLoss (Bybit,
                               OKX); elsewhere (Binance spot) the order is rejected rather
                               than sent without its exits
    client_order_id            params clientOrderId, which ccxt renames per exchange
                               (Binance newClientOrderId, OKX clOrdId, Bybit orderLinkId)

Idempotency. Binance spot keeps `newClientOrderId` unique only among *open* orders: a
filled order's id may be used again, so a redelivered market order would fill twice.
Before placing, the adapter therefore looks the order up (`lookup`) and reports a
DuplicateOrderError when the exchange has it (`check_before_place`, on by default). A
duplicate answer from the exchange itself (ccxt DuplicateOrderId, Binance -2010
"Duplicate order sent.") is a DuplicateOrderError too, and so is a close whose client
order id is already among the orders its ledger reads.

`lookup(order)` is fetch_order by client order id (`clientOrderId`, Binance
`origClientOrderId`) *and* the order's symbol, which most exchanges need: it finds
the order whichever process or instance placed it. An exchange without fetchOrder,
or one that cannot find an order by client order id, finds nothing (None).

    ccxt error                                          worker
    --------------------------------------------------  ------------------------------
    DuplicateOrderId, "Duplicate order sent."           DuplicateOrderError
    AuthenticationError, PermissionDenied               TerminalError (credentials)
    InsufficientFunds, InvalidOrder, BadRequest,        OrderRejectedError
      BadSymbol, OperationRejected, NotSupported,
      ArgumentsRequired
    OperationFailed: NetworkError, RequestTimeout,      RetryableError
      RateLimitExceeded, DDoSProtection,
      ExchangeNotAvailable, InvalidNonce, BadResponse
      (Binance -1001 "Internal error" is one)
    any other ExchangeError                             RetryableError (unknown: retried
                                                        up to max deliveries)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import ccxt.async_support as ccxt_async
import msgspec
from ccxt.base import errors as ccxt_errors

from worker.brokers import ccxt_ledger
from worker.brokers._text import clip, redact
from worker.brokers.base import Order, OrderResult
from worker.errors import (
    DuplicateOrderError,
    ExecutionError,
    OrderRejectedError,
    RetryableError,
    TerminalError,
)

if TYPE_CHECKING:
    from contracts.messages import Side

log = logging.getLogger("worker.brokers.ccxt")

# Options per exchange that keep load_markets to the spot market list, without the
# private endpoints it would otherwise call (Binance: sapi capital/config/getall) and
# without the futures and options market lists this adapter does not trade.
_EXCHANGE_OPTIONS: Final[dict[str, dict[str, Any]]] = {
    "binance": {
        "fetchCurrencies": False,
        "fetchMargins": False,
        "fetchMarkets": {"types": ["spot"]},
    },
}
# How exchanges word a duplicate client order id when ccxt has no DuplicateOrderId for it.
_DUPLICATE_MARKERS: Final = ("duplicate order sent", "duplicate clientorderid")
_REJECTIONS: Final = (
    ccxt_errors.InsufficientFunds,
    ccxt_errors.InvalidOrder,
    ccxt_errors.BadRequest,
    ccxt_errors.OperationRejected,
    ccxt_errors.NotSupported,
    ccxt_errors.ArgumentsRequired,
)
_STATUS: Final = {"closed": "filled"}


class CcxtConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One exchange account: ccxt's exchange id, credentials, and where to connect."""

    exchange: str
    api_key: str
    secret: str
    password: str | None = None  # the API passphrase some exchanges have (OKX)
    sandbox: bool = False
    # Send every API request to this origin instead (a local test server).
    api_url: str | None = None
    timeout: float = 10.0
    check_before_place: bool = True
    # A close sells the whole free base balance, not only what alertbridge bought.
    close_whole_balance: bool = False

    def __repr__(self) -> str:
        # The secrets never reach a log line, whoever logs the config.
        return (
            f"CcxtConfig(exchange={self.exchange!r}, api_key='***', secret='***',"
            f" sandbox={self.sandbox!r}, api_url={self.api_url!r}, timeout={self.timeout!r},"
            f" check_before_place={self.check_before_place!r},"
            f" close_whole_balance={self.close_whole_balance!r})"
        )


def _moved(url: Any, origin: str) -> Any:
    """`url` (or every URL in a dict of them) on `origin`, keeping the path."""
    if isinstance(url, dict):
        return {key: _moved(value, origin) for key, value in url.items()}
    if not isinstance(url, str):
        return url
    target, parts = urlsplit(origin), urlsplit(url)
    path = target.path.rstrip("/") + parts.path
    return urlunsplit((target.scheme, target.netloc, path, parts.query, parts.fragment))


def _exchange(config: CcxtConfig) -> Any:
    """A configured ccxt async exchange; ValueError for an exchange ccxt does not know."""
    if config.exchange not in ccxt_async.exchanges:
        raise ValueError(f"ccxt has no exchange {config.exchange!r}")
    settings: dict[str, Any] = {
        "apiKey": config.api_key,
        "secret": config.secret,
        "timeout": round(config.timeout * 1000),  # ccxt counts milliseconds
        "enableRateLimit": True,
        "options": {"defaultType": "spot", **_EXCHANGE_OPTIONS.get(config.exchange, {})},
    }
    if config.password is not None:
        settings["password"] = config.password
    exchange = getattr(ccxt_async, config.exchange)(settings)
    if config.sandbox:
        exchange.set_sandbox_mode(True)
    if config.api_url is not None:
        exchange.urls["api"] = _moved(exchange.urls["api"], config.api_url)
        if urlsplit(config.api_url).scheme == "http":
            # ccxt waits 250 ms in close() for TLS connections to shut down; plain HTTP has none.
            exchange.timeout_on_exit = 0
    return exchange


def _order_call(
    order: Order, has: dict[str, Any]
) -> tuple[Literal["market", "limit"], float | None, dict[str, Any]]:
    """(type, price, params) of `create_order` for a buy or sell (see the table above)."""
    params: dict[str, Any] = {"clientOrderId": order.client_order_id}
    kind: Literal["market", "limit"] = "market"
    price = None
    if order.order_type == "limit" or (
        order.order_type == "stop" and order.limit_price is not None
    ):
        kind, price = "limit", order.limit_price
    if order.order_type == "stop":
        if order.stop_price is None:
            # Without its trigger ccxt would send a plain market or limit order.
            raise OrderRejectedError("a stop order needs a stop price")
        params["triggerPrice"] = order.stop_price
    if order.take_profit is not None or order.stop_loss is not None:
        if not has.get("createOrderWithTakeProfitAndStopLoss"):
            raise OrderRejectedError(
                "this exchange cannot attach a take-profit or stop-loss to an order through"
                " ccxt; send the exits as their own alerts"
            )
        if order.take_profit is not None:
            params["takeProfit"] = {"triggerPrice": order.take_profit}
        if order.stop_loss is not None:
            params["stopLoss"] = {"triggerPrice": order.stop_loss}
    return kind, price, params


def _translate(exc: Exception, name: str, secrets: tuple[str, ...]) -> ExecutionError:
    """The worker's exception for a ccxt error (see the table above).

    Raised `from None`: ccxt's message names the signed URL, and a chained exception
    would carry it, signature and all, into any traceback that is logged.
    """
    text = redact(str(exc), secrets)
    message = f"{name}: {type(exc).__name__}: {clip(text)}"
    if isinstance(exc, ccxt_errors.DuplicateOrderId) or (
        isinstance(exc, ccxt_errors.ExchangeError)
        and any(marker in text.lower() for marker in _DUPLICATE_MARKERS)
    ):
        return DuplicateOrderError(message)
    if isinstance(exc, ccxt_errors.AuthenticationError):
        return TerminalError(message)
    if isinstance(exc, ccxt_errors.OperationFailed):
        return RetryableError(message)
    if isinstance(exc, _REJECTIONS):
        return OrderRejectedError(message)
    return RetryableError(message)


def _result(raw: dict[str, Any], client_order_id: str, sent: Side) -> OrderResult:
    """ccxt's unified order structure as an OrderResult; `sent` is the side asked for."""
    # Some exchanges leave the side out of a create_order answer.
    side: Side = raw["side"] if raw.get("side") in ("buy", "sell") else sent
    status = str(raw.get("status") or "open")
    filled = raw.get("filled") or 0.0
    average = raw.get("average") if filled else None
    return OrderResult(
        client_order_id=str(raw.get("clientOrderId") or client_order_id),
        broker_order_id=str(raw.get("id") or ""),
        status=_STATUS.get(status, status),
        side=side,
        quantity=float(raw.get("amount") or filled),
        fill_price=None if average is None else float(average),
    )


def _sent_side(order: Order) -> Side:
    """The side the exchange sees: a spot close is a sell."""
    return "sell" if order.side == "close" else order.side


class CcxtBroker:
    """One exchange account through ccxt; one HTTP session per instance."""

    def __init__(self, config: CcxtConfig) -> None:
        self.name = f"ccxt:{config.exchange}"
        self.can_lookup = True
        self._config = config
        self._secrets = tuple(s for s in (config.api_key, config.secret, config.password) if s)
        self._exchange = _exchange(config)

    async def place(self, order: Order) -> OrderResult:
        """Create the order, or sell what alertbridge holds for a close (spot)."""
        if self._config.check_before_place and await self.lookup(order) is not None:
            raise DuplicateOrderError(
                f"{self.name} already has client order id {order.client_order_id}"
            )
        try:
            if order.side == "close":
                raw = await self._sell_held(order)
            else:
                kind, price, params = _order_call(order, self._exchange.has)
                raw = await self._exchange.create_order(
                    order.symbol, kind, order.side, order.quantity, price, params
                )
        except ccxt_errors.BaseError as exc:
            raise _translate(exc, self.name, self._secrets) from None
        return _result(raw, order.client_order_id, _sent_side(order))

    async def lookup(self, order: Order) -> OrderResult | None:
        """fetch_order by the order's client order id and symbol; None when not found."""
        try:
            raw = await self._find(order.client_order_id, order.symbol)
        except ccxt_errors.BaseError as exc:
            raise _translate(exc, self.name, self._secrets) from None
        return None if raw is None else _result(raw, order.client_order_id, _sent_side(order))

    async def equity(self) -> float | None:
        """None: spot equity would need every asset priced in one currency."""
        return None

    async def close(self) -> None:
        """Close ccxt's HTTP session."""
        await self._exchange.close()

    async def _find(self, client_order_id: str, symbol: str) -> dict[str, Any] | None:
        """fetch_order by client order id; None when the exchange has no such order."""
        if not self._exchange.has.get("fetchOrder"):
            return None
        try:
            raw: dict[str, Any] = await self._exchange.fetch_order(
                "", symbol, {"clientOrderId": client_order_id}
            )
        except ccxt_errors.OrderNotFound:
            return None
        except (ccxt_errors.ArgumentsRequired, ccxt_errors.NotSupported) as exc:
            # This exchange cannot find an order by client order id, even with the symbol.
            log.debug("%s cannot look up %s: %s", self.name, client_order_id, type(exc).__name__)
            return None
        return raw

    async def _sell_held(self, order: Order) -> dict[str, Any]:
        """A close on spot: sell at market what alertbridge holds, capped by the free balance."""
        await self._exchange.load_markets()
        market = self._exchange.market(order.symbol)
        if not market.get("spot"):
            raise OrderRejectedError(f"{self.name}: close is supported on spot markets only")
        amount = await self._sellable(order, market["base"])
        raw: dict[str, Any] = await self._exchange.create_order(
            order.symbol,
            "market",
            "sell",
            float(self._exchange.amount_to_precision(order.symbol, amount)),
            None,
            {"clientOrderId": order.client_order_id},
        )
        return raw

    async def _sellable(self, order: Order, base: str) -> float:
        """How much of `base` a close sells: alertbridge's holding (or, with
        close_whole_balance, everything) up to the free balance."""
        held = None
        if not self._config.close_whole_balance:
            ledger = await ccxt_ledger.read(self._exchange, order.symbol, base)
            if order.client_order_id in ledger.client_order_ids:
                # An earlier delivery placed this close (found even where lookup cannot).
                raise DuplicateOrderError(
                    f"{self.name} already has client order id {order.client_order_id}"
                )
            if ledger.held <= 0:
                raise TerminalError(
                    f"{self.name}: nothing bought through alertbridge to close for {order.symbol}"
                )
            held = float(ledger.held)
        balance = await self._exchange.fetch_balance()
        free = float((balance.get(base) or {}).get("free") or 0.0)
        if free <= 0:
            raise OrderRejectedError(f"{self.name}: no free {base} to sell to close {order.symbol}")
        amount = free if held is None else min(held, free)
        log.info(
            "%s close %s: alertbridge holds %s %s, %s free, selling %s",
            self.name, order.symbol, "all" if held is None else held, base, free, amount,
        )  # fmt: skip
        return amount
