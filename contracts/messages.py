"""Messages on the streams: one tagged union per stream, frozen msgspec Structs.

Schema evolution (msgspec docs/schema-evolution.rst): new fields get defaults;
never retype, rename or reuse a field or a tag. Decoders for stored messages are
lenient (unknown fields are ignored), so old readers survive new writers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from contracts.subjects import encode_token

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
    # How many times an operator re-queued it from the DLQ, and when they last did.
    replay: int = 0
    replayed_at: datetime | None = None


# --- EVENTS: what happened to each alert -------------------------------------------
# Every alert ends in exactly one terminal event (executed, rejected, expired,
# dead_lettered) per delivery round; attempt_failed and replayed come in between.


class EventBase(msgspec.Struct, frozen=True, kw_only=True):
    """Fields every event carries: whose alert, which round, when."""

    alert_id: str
    account: str
    symbol: str
    at: datetime
    replay: int = 0


class Executed(EventBase, frozen=True, kw_only=True, tag="executed"):
    """The broker accepted the order (or already had it: a redelivery or a replay)."""

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
    already_done: bool = False
    # Seconds from the ingress's receipt (or the replay) to the broker's answer.
    latency: float | None = None


class Rejected(EventBase, frozen=True, kw_only=True, tag="rejected"):
    """A terminal failure: the order can never succeed as sent. It is in the DLQ."""

    reason: str
    attempts: int
    stream_seq: int
    # What the alert asked for, and its DLQ entry (`alertbridge dlq replay <dlq_seq>`):
    # for the people told about it (notifier). Absent in events of older versions.
    side: Side | None = None
    quantity: float | None = None
    dlq_seq: int | None = None


class Expired(EventBase, frozen=True, kw_only=True, tag="expired"):
    """Too old to execute, and not at the broker (asked, when an earlier attempt may have
    placed it). It is in the DLQ."""

    age: float
    max_age: float
    # The broker's last retryable failure, when retries ran out of time.
    last_error: str = ""
    attempts: int
    stream_seq: int
    # As in `Rejected`: what the alert asked for, and its DLQ entry.
    side: Side | None = None
    quantity: float | None = None
    dlq_seq: int | None = None


class DeadLettered(EventBase, frozen=True, kw_only=True, tag="dead_lettered"):
    """Every delivery failed (max deliveries) or it was terminated from outside."""

    reason: str
    deliveries: int
    last_error: str | None = None
    stream_seq: int
    dlq_seq: int
    # What the alert asked for (notifier); absent in events of older versions.
    side: Side | None = None
    quantity: float | None = None


class AttemptFailed(EventBase, frozen=True, kw_only=True, tag="attempt_failed"):
    """A retryable failure; the server redelivers the alert later."""

    error: str
    attempts: int
    stream_seq: int


class Replayed(EventBase, frozen=True, kw_only=True, tag="replayed"):
    """An operator re-queued the alert from the DLQ (`replay` is the new round)."""

    dlq_seq: int
    stream_seq: int


Event = Executed | Rejected | Expired | DeadLettered | AttemptFailed | Replayed
TerminalEvent = Executed | Rejected | Expired | DeadLettered

EVENT_KINDS: Final[dict[type[EventBase], str]] = {
    Executed: "executed",
    Rejected: "rejected",
    Expired: "expired",
    DeadLettered: "dead_lettered",
    AttemptFailed: "attempt_failed",
    Replayed: "replayed",
}

alert_encoder: Final = msgspec.json.Encoder()
alert_decoder: Final = msgspec.json.Decoder(Alert)
event_encoder: Final = msgspec.json.Encoder()
event_decoder: Final = msgspec.json.Decoder(Event)


def event_kind(event: Event) -> str:
    """The subject token of an event's kind."""
    return EVENT_KINDS[type(event)]


def alert_msg_id(account: str, alert_id: str) -> str:
    """The `Nats-Msg-Id` of an alert: its id scoped to its account.

    A sender's id is unique only within its account, so another account can never
    pre-empt it. `alert.<account token>.<id>`: the account token holds no `.`, so the
    form is unambiguous, and its first token is never `replay` (see `replay_msg_id`).
    """
    return f"alert.{encode_token(account)}.{alert_id}"


def event_msg_id(event: Event) -> str:
    """The `Nats-Msg-Id` of an event: a redelivered alert never records a fact twice."""
    base = f"{alert_msg_id(event.account, event.alert_id)}:{event.replay}:{event_kind(event)}"
    return f"{base}:{event.attempts}" if isinstance(event, AttemptFailed) else base


# --- EVENTS about a worker itself, not about an alert ---------------------------------
# On `events.<kind>.<worker>.<loop>`, a union of their own: what folds over alert events
# (an alert's history, the orders) skips them, as it skips any kind it cannot decode.


class LoopDown(msgspec.Struct, frozen=True, kw_only=True, tag="loop_down"):
    """One of a worker's supervised consume loops has been down for too long."""

    worker: str  # host:pid
    loop: str
    at: datetime
    down_for: float
    error: str


class LoopUp(msgspec.Struct, frozen=True, kw_only=True, tag="loop_up"):
    """A loop reported down is live again, after `down_for` seconds."""

    worker: str
    loop: str
    at: datetime
    down_for: float


LoopEvent = LoopDown | LoopUp
LOOP_EVENT_KINDS: Final[dict[type[LoopDown | LoopUp], str]] = {
    LoopDown: "loop_down",
    LoopUp: "loop_up",
}
loop_event_decoder: Final = msgspec.json.Decoder(LoopEvent)


# --- EVENTS about the kill switch: `events.{halted,resumed}.<account>.<by>` ----------
# A union of their own too (an account's, not an alert's); `account` is "*" for every
# account (contracts.risk.EVERY_ACCOUNT).


class Halted(msgspec.Struct, frozen=True, kw_only=True, tag="halted"):
    """Trading stopped: by the operators (`alertbridge halt`) or the circuit breaker."""

    account: str
    reason: str
    by: Literal["ops", "breaker"]
    at: datetime
    halt_id: str  # one per halt: a redelivered trip records it once


class Resumed(msgspec.Struct, frozen=True, kw_only=True, tag="resumed"):
    """The operators resumed trading (`alertbridge resume`)."""

    account: str
    at: datetime
    halt_id: str


HaltEvent = Halted | Resumed
HALT_EVENT_KINDS: Final[dict[type[Halted | Resumed], str]] = {
    Halted: "halted",
    Resumed: "resumed",
}
halt_event_decoder: Final = msgspec.json.Decoder(HaltEvent)


def halt_event_msg_id(event: HaltEvent) -> str:
    """The `Nats-Msg-Id` of a halt event (never `alert.`-prefixed: no alert's id)."""
    return f"halt.{encode_token(event.account)}.{HALT_EVENT_KINDS[type(event)]}.{event.halt_id}"


def replay_msg_id(alert: Alert) -> str:
    """The `Nats-Msg-Id` of an alert in replay round `alert.replay`: new per round, the
    same for a repeated command, and out of any webhook's reach (a webhook's message id
    always starts `alert.`)."""
    scoped = alert_msg_id(alert.account, alert.id)
    return scoped if alert.replay == 0 else f"replay.{alert.replay}.{scoped}"


# --- ADVISORIES: the server's own word (lenient: only the fields we use) -----------


class Advisory(msgspec.Struct, frozen=True, kw_only=True):
    """`$JS.EVENT.ADVISORY.CONSUMER.{MAX_DELIVERIES,MSG_TERMINATED}.<stream>.<consumer>`."""

    type: str
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int = 0
    reason: str = ""


advisory_decoder: Final = msgspec.json.Decoder(Advisory)
