"""The signed HTTP forwarder: POST every order, as JSON, to a URL the user runs.

The body is the `Order` as msgspec JSON (client_order_id, account, symbol, side,
quantity, order_type, limit/stop prices, take_profit, stop_loss, reference_price).
Nothing is translated: the receiver sees alertbridge's own order model.

    alertbridge        forwarded body
    -----------------  --------------------------------------------------------
    side buy / sell    "side": "buy" / "sell", "quantity": the alert's quantity
    side close         "side": "close": the receiver flattens the position;
                       "quantity" is 0 unless the alert gave one
    order types        "order_type": "market" / "limit" / "stop", with
                       "limit_price" / "stop_price" as sent
    take-profit/stop   "take_profit" / "stop_loss" as sent (null when absent)

Headers on every request (the lookup GET signs an empty body):

    Idempotency-Key: <client_order_id>
    X-Alertbridge-Timestamp: <unix seconds>
    X-Alertbridge-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>

A receiver recomputes the HMAC over the raw body, compares with
`hmac.compare_digest`, and refuses timestamps more than a few minutes old.

    answer                                 outcome
    -------------------------------------  ---------------------------------------
    2xx                                    done; OrderResult from the JSON answer's
                                           id/status/fill_price/side/quantity where
                                           present, else the order's own fields
    409                                    DuplicateOrderError (the worker looks it up)
    408, 429, 5xx, timeout, no connection  RetryableError
    other 4xx                              OrderRejectedError with the answer's text
    lookup: GET <url>/<client_order_id>    200 JSON with id, status, side, quantity
                                           (fill_price optional); 404 → None
    lookup without `lookup` configured     no request: the order itself, status
                                           "accepted", broker_order_id = client_order_id

Without lookups the worker only asks after a 409, and a 409 is the receiver's word
that it has the order: answering None there would make the worker retry "cannot find
it yet" until the alert is dead-lettered, though the order went through.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final, Literal
from urllib.parse import quote

import msgspec

from contracts.messages import Side
from worker.brokers._http import HttpAnswer, HttpClient
from worker.brokers._text import clip
from worker.brokers.base import Order, OrderResult
from worker.errors import DuplicateOrderError, OrderRejectedError, RetryableError, TerminalError

IDEMPOTENCY_KEY: Final = "Idempotency-Key"
TIMESTAMP: Final = "X-Alertbridge-Timestamp"
SIGNATURE: Final = "X-Alertbridge-Signature"


class HttpForwardConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where to forward, the shared signing secret, and whether the receiver has lookups."""

    url: str
    secret: str
    lookup: bool = False
    timeout: float = 10.0

    def __repr__(self) -> str:
        # The secret never reaches a log line, whoever logs the config.
        return (
            f"HttpForwardConfig(url={self.url!r}, secret='***', lookup={self.lookup!r},"
            f" timeout={self.timeout!r})"
        )


class _ForwardReply(msgspec.Struct, frozen=True):
    """What a receiver may say about an order; every field is optional on a 2xx."""

    id: str | int | None = None
    status: str | None = None
    side: Side | None = None
    quantity: float | None = None
    fill_price: float | None = None


_order_encoder: Final = msgspec.json.Encoder()
_answer_decoder: Final = msgspec.json.Decoder(_ForwardReply)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Alertbridge-Signature` value: `sha256=` and the hex HMAC of `timestamp.body`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def _raise_for(response: HttpAnswer) -> None:
    """Map a non-2xx answer onto the worker's exceptions (see the table above)."""
    status = response.status
    if 200 <= status < 300:
        return
    answer = f"forward target answered {status}: {clip(response.text or response.reason)}"
    if status == 409:
        raise DuplicateOrderError(answer)
    if status in (408, 429) or status >= 500:
        raise RetryableError(answer)
    if status >= 400:
        raise OrderRejectedError(answer)
    # A redirect: the URL is wrong, and every order would fail the same way.
    raise TerminalError(f"{answer} (is the URL right?)")


def _decode(response: HttpAnswer) -> _ForwardReply:
    """The answer's order fields; an empty or non-JSON 2xx body has none."""
    try:
        return _answer_decoder.decode(response.content)
    except msgspec.DecodeError:
        return _ForwardReply()


class HttpForwardBroker:
    """Forwards orders to one URL, signed; the receiver owns execution and idempotency."""

    name = "http"

    def __init__(self, config: HttpForwardConfig) -> None:
        self._config = config
        self._client = HttpClient("forward", config.timeout, private_urls=True)
        # Without the receiver's lookups, a duplicate answer is all it says about an order.
        self.can_lookup = config.lookup

    async def place(self, order: Order) -> OrderResult:
        """POST the order; a 2xx answer means the receiver has it."""
        body = _order_encoder.encode(order)
        response = await self._send("POST", self._config.url, order.client_order_id, body)
        _raise_for(response)
        answer = _decode(response)
        return OrderResult(
            client_order_id=order.client_order_id,
            broker_order_id=order.client_order_id if answer.id is None else str(answer.id),
            status=answer.status or "accepted",
            side=answer.side or order.side,
            quantity=order.quantity if answer.quantity is None else answer.quantity,
            fill_price=answer.fill_price,
        )

    async def lookup(self, order: Order) -> OrderResult | None:
        """GET `<url>/<client_order_id>` when the receiver has lookups; else the order as sent."""
        client_order_id = order.client_order_id
        if not self._config.lookup:
            return OrderResult(
                client_order_id=client_order_id,
                broker_order_id=client_order_id,
                status="accepted",
                side=order.side,
                quantity=order.quantity,
            )
        url = f"{self._config.url.rstrip('/')}/{quote(client_order_id, safe='')}"
        response = await self._send("GET", url, client_order_id, b"")
        if response.status == 404:
            return None
        _raise_for(response)
        answer = _decode(response)
        if (
            answer.id is None
            or answer.status is None
            or answer.side is None
            or answer.quantity is None
        ):
            raise TerminalError(
                f"forward target's lookup answer is not an order (needs id, status, side,"
                f" quantity): {clip(response.text)}"
            )
        return OrderResult(
            client_order_id=client_order_id,
            broker_order_id=str(answer.id),
            status=answer.status,
            side=answer.side,
            quantity=answer.quantity,
            fill_price=answer.fill_price,
        )

    async def equity(self) -> float | None:
        """None: the receiver reports no equity."""
        return None

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.close()

    async def _send(
        self, method: Literal["GET", "POST"], url: str, key: str, body: bytes
    ) -> HttpAnswer:
        timestamp = str(int(time.time()))
        headers = {
            IDEMPOTENCY_KEY: key,
            TIMESTAMP: timestamp,
            SIGNATURE: signature(self._config.secret, timestamp, body),
        }
        if body:
            headers["Content-Type"] = "application/json"
        return await self._client.request(method, url, content=body, headers=headers)
