"""A broker on the far side of the `http` adapter (worker/brokers/http_forward.py) that
keeps the history from outside: every order POST as it came, in a list.

It behaves as a real broker does: a client order id it already holds is answered 409
(the adapter's "duplicate", so a redelivery is found as `already_done`), and
`GET <url>/<client order id>` finds an order. It keys nothing on what the system says
about itself: which alert an order belongs to is read from the order's
`reference_price`, which the sender set to the alert's own tag. An order placed twice
under two client order ids (an id that changed on redelivery) is then two placements of
one alert here, where a UNIQUE column would see two unrelated orders.

Which worker process sent a request is the last segment of the URL it was given
(`<base>/orders/<worker>`): tests give each worker slot its own accounts file.
`on_placed` is the hook a chaos test uses to act between "order placed" and "the worker
hears of it": it runs after the placement is recorded and before the answer is sent.
`down_until` (a `time.monotonic()` instant) is an outage: until then every request is
answered 503 and nothing is placed; `refused` counts those answers.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
from aiohttp import web

SECRET_ENV: Final = "CHAOS_BROKER_SECRET"
SECRET: Final = "chaos-broker-signing-secret-0123456789"


class OrderBody(msgspec.Struct, frozen=True):
    """What the forwarder POSTs, as far as this broker reads it."""

    client_order_id: str
    symbol: str
    side: str
    quantity: float
    reference_price: float | None = None


_order: Final = msgspec.json.Decoder(OrderBody)


@dataclass(frozen=True)
class Call:
    """One order POST as the broker saw it."""

    tag: int  # the alert's tag, from the order's reference_price
    client_order_id: str
    symbol: str
    worker: str
    placed: bool  # True: a new order; False: answered 409, the book had the id
    at: float = field(default_factory=time.monotonic)


class Receiver:
    """The broker: a book keyed by client order id, and every call in a list."""

    def __init__(self, on_placed: Callable[[Call], None] | None = None) -> None:
        self.on_placed = on_placed
        self.calls: list[Call] = []
        self.book: dict[str, OrderBody] = {}
        self.lookups = 0
        self.bad_requests: list[str] = []  # wrong signature, or an order without a tag
        self.down_until = 0.0
        self.refused = 0

    def _down(self) -> web.Response | None:
        if time.monotonic() >= self.down_until:
            return None
        self.refused += 1
        return web.json_response({"error": "service unavailable"}, status=503)

    def app(self) -> web.Application:
        """The aiohttp app: POST /orders/{worker}, GET /orders/{worker}/{coid}."""
        app = web.Application()
        app.router.add_post("/orders/{worker}", self._place)
        app.router.add_get("/orders/{worker}/{coid}", self._lookup)
        return app

    async def _place(self, request: web.Request) -> web.Response:
        body = await request.read()
        if outage := self._down():
            return outage
        if not _signed(request, body):
            self.bad_requests.append("bad signature on a POST")
            return web.json_response({"error": "bad signature"}, status=401)
        order = _order.decode(body)
        if order.reference_price is None:
            self.bad_requests.append(f"order {order.client_order_id} without reference_price")
            return web.json_response({"error": "no reference price"}, status=400)
        coid = order.client_order_id
        placed = coid not in self.book
        call = Call(
            tag=round(order.reference_price), client_order_id=coid, symbol=order.symbol,
            worker=request.match_info["worker"], placed=placed,
        )  # fmt: skip
        self.calls.append(call)
        if not placed:
            return web.json_response({"error": "duplicate client order id"}, status=409)
        self.book[coid] = order
        if self.on_placed is not None:
            self.on_placed(call)  # before the answer: the worker has not heard of it yet
        return web.json_response({"id": f"bk-{coid}", "status": "accepted"}, status=201)

    async def _lookup(self, request: web.Request) -> web.Response:
        if outage := self._down():
            return outage
        self.lookups += 1
        if not _signed(request, b""):
            self.bad_requests.append("bad signature on a lookup")
            return web.json_response({"error": "bad signature"}, status=401)
        coid = request.match_info["coid"]
        order = self.book.get(coid)
        if order is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(
            {"id": f"bk-{coid}", "status": "accepted", "side": order.side,
             "quantity": order.quantity}
        )  # fmt: skip

    def placements(self) -> dict[int, list[Call]]:
        """Every accepted placement, per alert tag."""
        found: dict[int, list[Call]] = defaultdict(list)
        for call in self.calls:
            if call.placed:
                found[call.tag].append(call)
        return found

    def client_order_ids(self) -> dict[int, set[str]]:
        """Every client order id an alert's POSTs carried, per alert tag."""
        found: dict[int, set[str]] = defaultdict(set)
        for call in self.calls:
            found[call.tag].add(call.client_order_id)
        return found

    def placed_in_order(self) -> dict[str, list[int]]:
        """Per broker symbol, the tags of the accepted placements in the order they came."""
        found: dict[str, list[int]] = defaultdict(list)
        for call in self.calls:
            if call.placed:
                found[call.symbol].append(call.tag)
        return found

    def duplicates(self) -> int:
        """How many POSTs were answered 409."""
        return sum(not call.placed for call in self.calls)


def _signed(request: web.Request, body: bytes) -> bool:
    """The receiver's check of the forwarder's signature, computed here independently."""
    timestamp = request.headers.get("X-Alertbridge-Timestamp", "")
    mac = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    given = request.headers.get("X-Alertbridge-Signature", "")
    return hmac.compare_digest(given, f"sha256={mac.hexdigest()}")


def write_accounts(path: Path, url: str) -> Path:
    """An accounts file: the `default` account on the `http` broker at `url`, one unit per
    order, with lookups; the signing secret in SECRET_ENV (see `broker_env`)."""
    path.write_text(
        "[accounts.default]\n"
        'broker = "http"\n'
        'sizing = { kind = "fixed_quantity", quantity = 1 }\n'
        "[accounts.default.http]\n"
        f'url = "{url}"\n'
        f'secret_env = "{SECRET_ENV}"\n'
        "lookup = true\n"
        "timeout = 5\n",
        encoding="utf-8",
    )
    return path


def broker_env(accounts: Path) -> dict[str, str]:
    """The environment that points a process at `accounts` and gives it the secret."""
    return {"ALERTBRIDGE_CONFIG": str(accounts), SECRET_ENV: SECRET}
