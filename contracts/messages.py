"""Messages on the streams: one tagged union per stream, frozen msgspec Structs.

Schema evolution (msgspec docs/schema-evolution.rst): new fields get defaults;
never retype, rename or reuse a field or a tag. Decoders for stored messages are
lenient (unknown fields are ignored), so old readers survive new writers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

import msgspec

Side = Literal["buy", "sell", "close"]
OrderType = Literal["market", "limit", "stop"]


class Alert(msgspec.Struct, frozen=True, kw_only=True, tag="alert"):
    """One accepted alert, as stored on `ALERTS`. The secret is never part of it."""

    id: str
    account: str = "default"
    symbol: str
    side: Side
    quantity: float | None = None
    order_type: OrderType = "market"
    price: float | None = None
    limit_price: float | None = None
    stop_price: float | None = None
    take_profit: float | None = None
    stop_loss: float | None = None
    tag: str | None = None
    comment: str | None = None
    # The sender's own times: `{{time}}` (bar time) and `{{timenow}}` (fire time).
    time: datetime | None = None
    timenow: datetime | None = None
    received_at: datetime
    # Every other field of the body, untouched, for the audit trail.
    extras: dict[str, Any] = msgspec.field(default_factory=dict)


# --- EVENTS ----------------------------------------------------------------------


class Executed(msgspec.Struct, frozen=True, kw_only=True, tag="executed"):
    """The broker accepted the order (or already had it: a redelivery)."""

    alert_id: str
    account: str
    symbol: str
    side: Side
    quantity: float
    order_type: OrderType
    client_order_id: str
    broker: str
    broker_order_id: str
    status: str
    fill_price: float | None = None
    attempts: int
    stream_seq: int
    at: datetime
    already_done: bool = False


class Rejected(msgspec.Struct, frozen=True, kw_only=True, tag="rejected"):
    """A terminal failure: the order can never succeed as sent."""

    alert_id: str
    account: str
    symbol: str
    reason: str
    attempts: int
    stream_seq: int
    at: datetime


class AttemptFailed(msgspec.Struct, frozen=True, kw_only=True, tag="attempt_failed"):
    """A retryable failure; the server redelivers the alert later."""

    alert_id: str
    account: str
    symbol: str
    error: str
    attempts: int
    stream_seq: int
    at: datetime


Event = Executed | Rejected | AttemptFailed

EVENT_KINDS: Final[dict[type[Event], str]] = {
    Executed: "executed",
    Rejected: "rejected",
    AttemptFailed: "attempt_failed",
}

alert_encoder: Final = msgspec.json.Encoder()
alert_decoder: Final = msgspec.json.Decoder(Alert)
event_decoder: Final = msgspec.json.Decoder(Event)


def event_kind(event: Event) -> str:
    """The subject token of an event's kind."""
    return EVENT_KINDS[type(event)]


def event_msg_id(event: Event) -> str:
    """The `Nats-Msg-Id` of an event: a redelivered alert never records a fact twice."""
    if isinstance(event, AttemptFailed):
        return f"{event.alert_id}:{event_kind(event)}:{event.attempts}"
    return f"{event.alert_id}:{event_kind(event)}"
