"""Alpaca Trading API v2 over its REST API (aiohttp): stocks and crypto, paper and live.

How an alertbridge order becomes an Alpaca order (numbers travel as decimal strings):

    alertbridge                   Alpaca
    ----------------------------  -----------------------------------------------------
    side buy / sell               POST /v2/orders  side buy / sell, qty = quantity
    side close                    GET /v2/positions/{symbol} (crypto: the position
                                  symbol has no "/"), then POST /v2/orders type market,
                                  the opposite side (long → sell, short → buy),
                                  qty = abs(position qty); quantity, prices and exits
                                  of the alert are ignored
    market                        type market
    limit                         type limit, limit_price
    stop                          type stop, stop_price
    stop with a limit_price       type stop_limit, stop_price, limit_price
    take_profit and stop_loss     order_class bracket, take_profit.limit_price,
                                  stop_loss.stop_price
    only one of the two           order_class oto with that leg
    time in force                 configured (default day); crypto (symbol with "/") gtc
    client_order_id               order.client_order_id (at most 128 characters)

What Alpaca answers, and what the worker does with it:

    2xx                                        the order → OrderResult
    422 "client_order_id must be unique"       DuplicateOrderError (the worker looks it up)
    401                                        TerminalError: the API key is wrong
    403, 422, other 4xx                        OrderRejectedError with Alpaca's message
    close: position 404, no such order         OrderRejectedError "no open position"
    close: position 404, order exists          DuplicateOrderError (an earlier delivery
                                               closed it)
    408, 429, 5xx, timeout, connection error   RetryableError
    lookup: 404                                None

`equity()` reads `equity` from `GET /v2/account` (for percent-of-equity sizing).

A close is an order, not `DELETE /v2/positions/{symbol}`: the DELETE takes no client
order id, so a redelivered close that Alpaca had already executed was answered
"position does not exist" and dead-lettered. As an order it carries the client order
id: a redelivery while the close is still open gets the 422 above, one after it
filled finds the position gone and the order there; both are duplicates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import quote

import msgspec

from worker.brokers._http import HttpAnswer, HttpClient
from worker.brokers._text import clip
from worker.brokers.base import Order, OrderResult
from worker.errors import DuplicateOrderError, OrderRejectedError, RetryableError, TerminalError

if TYPE_CHECKING:
    from contracts.messages import Side

PAPER_URL: Final = "https://paper-api.alpaca.markets"
LIVE_URL: Final = "https://api.alpaca.markets"
MAX_CLIENT_ORDER_ID: Final = 128
_DUPLICATE: Final = "client_order_id must be unique"

TimeInForce = Literal["day", "gtc", "opg", "cls", "ioc", "fok"]


class AlpacaConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One Alpaca account; `base_url` chooses paper (the default) or live."""

    key_id: str
    secret_key: str
    base_url: str = PAPER_URL
    time_in_force: TimeInForce = "day"
    timeout: float = 10.0

    def __repr__(self) -> str:
        # The secret never reaches a log line, whoever logs the config.
        return (
            f"AlpacaConfig(key_id={self.key_id!r}, secret_key='***', base_url={self.base_url!r},"
            f" time_in_force={self.time_in_force!r}, timeout={self.timeout!r})"
        )


class _Leg(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    limit_price: str | None = None
    stop_price: str | None = None


class _OrderRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The body of `POST /v2/orders`."""

    symbol: str
    qty: str
    side: Literal["buy", "sell"]
    type: Literal["market", "limit", "stop", "stop_limit"]
    time_in_force: TimeInForce
    client_order_id: str
    limit_price: str | None = None
    stop_price: str | None = None
    order_class: Literal["bracket", "oto"] | None = None
    take_profit: _Leg | None = None
    stop_loss: _Leg | None = None


class _AlpacaOrder(msgspec.Struct, frozen=True):
    """The fields of Alpaca's order object that an OrderResult needs."""

    id: str
    client_order_id: str
    status: str
    side: Literal["buy", "sell"]
    qty: float | None = None  # null for a notional order
    filled_qty: float | None = None
    filled_avg_price: float | None = None


class _AlpacaError(msgspec.Struct, frozen=True):
    message: str = ""


class _AlpacaAccount(msgspec.Struct, frozen=True):
    equity: float


class _AlpacaPosition(msgspec.Struct, frozen=True):
    """The fields of Alpaca's position object that a close needs."""

    symbol: str
    qty: str  # a decimal string, negative for a short: passed on exactly, without its sign
    side: Literal["long", "short"]


_request_encoder: Final = msgspec.json.Encoder()
# Alpaca sends numbers as strings ("qty": "10"): lax mode reads them as floats.
_order_decoder: Final = msgspec.json.Decoder(_AlpacaOrder, strict=False)
_error_decoder: Final = msgspec.json.Decoder(_AlpacaError)
_account_decoder: Final = msgspec.json.Decoder(_AlpacaAccount, strict=False)
_position_decoder: Final = msgspec.json.Decoder(_AlpacaPosition)


def _decimal(value: float) -> str:
    """A plain decimal string (no exponent, no trailing zeros), as Alpaca wants numbers."""
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return text or "0"


def _price(value: float | None) -> str | None:
    return None if value is None else _decimal(value)


def _order_request(order: Order, time_in_force: TimeInForce) -> _OrderRequest:
    """The `POST /v2/orders` body for a buy or sell (see the table above)."""
    if order.side == "close":
        raise ValueError("a close is sized from the position: see _close_request")
    kind: Literal["market", "limit", "stop", "stop_limit"] = order.order_type
    if kind == "stop" and order.limit_price is not None:
        kind = "stop_limit"
    take_profit = None if order.take_profit is None else _Leg(limit_price=_price(order.take_profit))
    stop_loss = None if order.stop_loss is None else _Leg(stop_price=_price(order.stop_loss))
    order_class: Literal["bracket", "oto"] | None = None
    if take_profit and stop_loss:
        order_class = "bracket"
    elif take_profit or stop_loss:
        order_class = "oto"
    return _OrderRequest(
        symbol=order.symbol,
        qty=_decimal(order.quantity),
        side=order.side,
        type=kind,
        time_in_force="gtc" if "/" in order.symbol else time_in_force,
        client_order_id=order.client_order_id,
        limit_price=_price(order.limit_price) if kind in ("limit", "stop_limit") else None,
        stop_price=_price(order.stop_price) if kind in ("stop", "stop_limit") else None,
        order_class=order_class,
        take_profit=take_profit,
        stop_loss=stop_loss,
    )


def _close_request(
    order: Order, position: _AlpacaPosition, time_in_force: TimeInForce
) -> _OrderRequest:
    """The `POST /v2/orders` body that flattens `position`, under the close's client id."""
    return _OrderRequest(
        symbol=order.symbol,
        qty=position.qty.removeprefix("-"),
        side="sell" if position.side == "long" else "buy",
        type="market",
        time_in_force="gtc" if "/" in order.symbol else time_in_force,
        client_order_id=order.client_order_id,
    )


def _message(response: HttpAnswer) -> str:
    """Alpaca's error message (`{"code": 40310000, "message": "..."}`), else the raw text."""
    try:
        message = _error_decoder.decode(response.content).message
    except msgspec.DecodeError:
        message = ""
    return clip(message or response.text or response.reason)


def _raise_for(response: HttpAnswer) -> None:
    """Map a non-2xx answer onto the worker's exceptions (see the table above)."""
    status = response.status
    if 200 <= status < 300:
        return
    message = _message(response)
    answer = f"alpaca answered {status}: {message}"
    if status == 422 and _DUPLICATE in message.lower():
        raise DuplicateOrderError(answer)
    if status == 401:
        raise TerminalError(f"alpaca refused the API key ({status}): {message}")
    if status in (408, 429) or status >= 500:
        raise RetryableError(answer)
    if status >= 400:
        raise OrderRejectedError(answer)
    # A redirect means base_url is wrong: every order would fail the same way.
    raise TerminalError(f"{answer} (is the base URL right?)")


def _result(response: HttpAnswer) -> OrderResult:
    try:
        raw = _order_decoder.decode(response.content)
    except msgspec.DecodeError as exc:
        raise RetryableError(f"alpaca answered {response.status} with no order: {exc}") from exc
    side: Side = raw.side
    quantity = raw.qty if raw.qty is not None else raw.filled_qty
    return OrderResult(
        client_order_id=raw.client_order_id,
        broker_order_id=raw.id,
        status=raw.status,
        side=side,
        quantity=quantity or 0.0,
        fill_price=raw.filled_avg_price,
    )


class AlpacaBroker:
    """An Alpaca account over REST; one HTTP connection pool per instance."""

    name = "alpaca"
    can_lookup = True

    def __init__(self, config: AlpacaConfig) -> None:
        self._config = config
        self._client = HttpClient(
            "alpaca",
            config.timeout,
            base_url=config.base_url,
            headers={
                "APCA-API-KEY-ID": config.key_id,
                "APCA-API-SECRET-KEY": config.secret_key,
                "Accept": "application/json",
            },
        )

    async def place(self, order: Order) -> OrderResult:
        """Submit the order, or liquidate the position for a close."""
        if len(order.client_order_id) > MAX_CLIENT_ORDER_ID:
            raise TerminalError(
                f"client order id is {len(order.client_order_id)} characters,"
                f" Alpaca allows {MAX_CLIENT_ORDER_ID}"
            )
        if order.side == "close":
            request = _close_request(order, await self._position(order), self._config.time_in_force)
        else:
            request = _order_request(order, self._config.time_in_force)
        response = await self._send(
            "POST",
            "/v2/orders",
            content=_request_encoder.encode(request),
            headers={"Content-Type": "application/json"},
        )
        _raise_for(response)
        return _result(response)

    async def lookup(self, order: Order) -> OrderResult | None:
        """`GET /v2/orders:by_client_order_id`; None when Alpaca has no such order."""
        response = await self._send(
            "GET",
            "/v2/orders:by_client_order_id",
            params={"client_order_id": order.client_order_id},
        )
        if response.status == 404:
            return None
        _raise_for(response)
        return _result(response)

    async def equity(self) -> float:
        """The account's equity (`GET /v2/account`), in its currency."""
        response = await self._send("GET", "/v2/account")
        _raise_for(response)
        try:
            return _account_decoder.decode(response.content).equity
        except msgspec.DecodeError as exc:
            raise RetryableError(f"alpaca answered with no account equity: {exc}") from exc

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.close()

    async def _position(self, order: Order) -> _AlpacaPosition:
        """The open position a close flattens (see the table above for a flat one)."""
        path = f"/v2/positions/{quote(order.symbol.replace('/', ''), safe='')}"
        response = await self._send("GET", path)
        if response.status == 404:
            # Flat: never opened, or closed by an earlier delivery of this very close.
            if await self.lookup(order) is not None:
                raise DuplicateOrderError(
                    f"alpaca has no position in {order.symbol} and already has client"
                    f" order id {order.client_order_id}"
                )
            raise OrderRejectedError(f"alpaca has no open position in {order.symbol} to close")
        _raise_for(response)
        try:
            return _position_decoder.decode(response.content)
        except msgspec.DecodeError as exc:
            raise RetryableError(f"alpaca answered with no position: {exc}") from exc

    async def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> HttpAnswer:
        return await self._client.request(
            method, path, content=content, headers=headers, params=params
        )
