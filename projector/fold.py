"""Folding stream messages into the read models (schema: ops.platform.projections).

`Writer.apply(stream, batch)` folds a batch in one transaction, together with the last
sequence applied from that stream: a message at or below it is a redelivery and changes
nothing, so a projector killed anywhere, restarted, or handed a batch twice ends with
the same tables.

The three streams are read by separate consumers, so an alert's ALERTS message and its
events arrive in any interleaving. Each column therefore has one source, or a rule that
gives the same result in any order: ALERTS sets what the alert asked for; EVENTS sets
its status and outcome, in EVENTS order; `received` is the earliest time seen, `replay`
the highest round, `updated` the latest time. A clean rebuild and a projector restarted
mid-stream end with identical tables.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec

from contracts import tracing
from contracts.headers import DeadLetterHeaders
from contracts.messages import (
    EVENT_KINDS,
    AttemptFailed,
    DeadLettered,
    Event,
    Executed,
    Expired,
    Rejected,
    Replayed,
    alert_decoder,
    event_decoder,
)
from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM
from ops.platform.projection_schema import SCHEMA
from ops.platform.projections import RECEIVED, STREAMS, micros
from projector.positions import Position, fill

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

log = logging.getLogger("projector")

ALERT_KINDS: Final = frozenset(EVENT_KINDS.values())


@dataclass(frozen=True)
class Stored:
    """One message as stored: its stream sequence, headers and payload."""

    seq: int
    headers: Mapping[str, str] | None
    data: bytes


class _Head(msgspec.Struct, frozen=True):
    type: str = ""


_head: Final = msgspec.json.Decoder(_Head)

_TOUCH_ALERT: Final = """
INSERT INTO alerts (account, alert_id, replay, symbol, side, received, status, trace_id,
                    updated)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (account, alert_id) DO UPDATE SET
    replay = max(replay, excluded.replay), side = coalesce(side, excluded.side),
    received = min(received, excluded.received), trace_id = coalesce(trace_id, excluded.trace_id),
    updated = max(updated, excluded.updated)
"""
_ALERT: Final = """
INSERT INTO alerts (account, alert_id, replay, symbol, side, quantity, order_type, received,
                    status, trace_id, alert_seq, updated)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (account, alert_id) DO UPDATE SET
    replay = max(replay, excluded.replay), symbol = excluded.symbol, side = excluded.side,
    quantity = coalesce(excluded.quantity, quantity), order_type = excluded.order_type,
    received = min(received, excluded.received), trace_id = coalesce(trace_id, excluded.trace_id),
    alert_seq = max(coalesce(alert_seq, 0), excluded.alert_seq),
    updated = max(updated, excluded.updated)
"""
_DEAD_LETTER: Final = """
INSERT INTO dead_letters (dlq_seq, account, alert_id, symbol, side, quantity, reason,
                          deliveries, last_error, alert_seq, at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dlq_seq) DO UPDATE SET
    account = excluded.account, alert_id = excluded.alert_id, symbol = excluded.symbol,
    side = excluded.side, quantity = excluded.quantity, reason = excluded.reason,
    deliveries = excluded.deliveries, last_error = excluded.last_error,
    alert_seq = excluded.alert_seq, at = excluded.at
"""


class Writer:
    """The projector's one connection to its file; the only writer there is."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A commit is on disk before its batch is acked: a lost commit would be a gap.
        self._db.execute("PRAGMA synchronous=FULL")
        # All tables at once: a reader never sees some without the others (open_readonly).
        self._db.executescript(f"BEGIN;\n{SCHEMA}\nCOMMIT;")
        self._applied = {s: 0 for s in STREAMS}
        self._applied.update(dict(self._db.execute("SELECT stream, seq FROM applied")))

    def close(self) -> None:
        """Checkpoint and close the file."""
        self._db.close()

    def applied(self, stream: str) -> int:
        """The last sequence of `stream` folded in."""
        return self._applied[stream]

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def apply(self, stream: str, batch: Sequence[Stored], up_to: int = 0) -> int:
        """Fold the messages of `batch` not applied yet; return how many were. `up_to`
        marks the stream applied that far even past the last message (a rebuild)."""
        done = self._applied[stream]
        fresh = [m for m in batch if m.seq > done]
        last = max([done, up_to, *(m.seq for m in fresh)])
        if last == done:
            return 0
        with self._tx():
            for message in fresh:
                self._one(stream, message)
            self._db.execute(
                "INSERT INTO applied (stream, seq) VALUES (?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq",
                (stream, last),
            )
        self._applied[stream] = last
        return len(fresh)

    def stream_last(self, stream: str, last: int, checked_us: int) -> None:
        """Record the stream's last sequence as just read (readers compute the lag)."""
        with self._tx():
            self._db.execute(
                "INSERT INTO applied (stream, seq, last, checked) VALUES (?, 0, ?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET last = excluded.last, "
                "checked = excluded.checked",
                (stream, last, checked_us),
            )

    def _one(self, stream: str, message: Stored) -> None:
        try:
            if stream == ALERTS_STREAM:
                self._alert(message)
            elif stream == EVENTS_STREAM:
                self._event(message)
            elif stream == DLQ_STREAM:
                self._dead_letter(message)
        except msgspec.DecodeError as exc:  # not ours, or damaged: the views skip it
            log.warning("%s seq %d: undecodable, skipped: %s", stream, message.seq, exc)

    def _alert(self, message: Stored) -> None:
        a = alert_decoder.decode(message.data)
        received = micros(a.received_at)
        self._db.execute(
            _ALERT,
            (a.account, a.id, a.replay, a.symbol, a.side, a.quantity, a.order_type, received,
             RECEIVED, tracing.trace_id_of(message.headers), message.seq,
             micros(a.replayed_at or a.received_at)),
        )  # fmt: skip

    def _event(self, message: Stored) -> None:
        if _head.decode(message.data).type not in ALERT_KINDS:
            return  # a worker's or the kill switch's event: about no alert
        event = event_decoder.decode(message.data)
        kind = EVENT_KINDS[type(event)]
        at = micros(event.at)
        self._db.execute(
            "INSERT OR IGNORE INTO events (seq, account, alert_id, replay, kind, at, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (message.seq, event.account, event.alert_id, event.replay, kind, at, message.data),
        )
        side = getattr(event, "side", None)
        self._db.execute(
            _TOUCH_ALERT,
            (event.account, event.alert_id, event.replay, event.symbol, side, at, kind,
             tracing.trace_id_of(message.headers), at),
        )  # fmt: skip
        changes = _outcome(event)
        columns = ", ".join(f"{name} = ?" for name in changes)
        self._db.execute(
            f"UPDATE alerts SET status = ?, {columns} "  # noqa: S608 - names from _outcome
            "WHERE account = ? AND alert_id = ?",
            (kind, *changes.values(), event.account, event.alert_id),
        )
        if isinstance(event, Executed):
            self._order(message.seq, event)
        elif isinstance(event, Replayed):
            self._db.execute(
                "INSERT INTO dead_letters (dlq_seq, replayed_round) VALUES (?, ?) "
                "ON CONFLICT (dlq_seq) DO UPDATE SET "
                "replayed_round = max(coalesce(replayed_round, 0), excluded.replayed_round)",
                (event.dlq_seq, event.replay),
            )

    def _order(self, seq: int, e: Executed) -> None:
        placed = self._db.execute(
            "INSERT OR IGNORE INTO orders (seq, account, alert_id, replay, symbol, side, "
            "quantity, order_type, client_order_id, broker, broker_order_id, status, "
            "fill_price, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, e.account, e.alert_id, e.replay, e.symbol, e.side, e.quantity, e.order_type,
             e.client_order_id, e.broker, e.broker_order_id, e.status, e.fill_price,
             micros(e.at)),
        ).rowcount  # fmt: skip
        if not placed:
            return  # the broker had this client order id already: no second fill
        row = self._db.execute(
            "SELECT quantity, avg_price, realized_pnl, fills, unpriced FROM positions "
            "WHERE account = ? AND symbol = ?",
            (e.account, e.symbol),
        ).fetchone()
        before = Position(*row) if row else Position(0.0, 0.0, 0.0, 0, 0)
        after = fill(before, e.side, e.quantity, e.fill_price)
        self._db.execute(
            "INSERT INTO positions (account, symbol, quantity, avg_price, realized_pnl, fills, "
            "unpriced, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (account, symbol) DO UPDATE SET quantity = excluded.quantity, "
            "avg_price = excluded.avg_price, realized_pnl = excluded.realized_pnl, "
            "fills = excluded.fills, unpriced = excluded.unpriced, updated = excluded.updated",
            (e.account, e.symbol, after.quantity, after.avg_price, after.realized_pnl,
             after.fills, after.unpriced, micros(e.at)),
        )  # fmt: skip

    def _dead_letter(self, message: Stored) -> None:
        why = DeadLetterHeaders.from_headers(message.headers)
        try:
            a = alert_decoder.decode(message.data)
            who: tuple[str, str, str, str | None, float | None] = (
                a.account, a.id, a.symbol, a.side, a.quantity,
            )  # fmt: skip
        except msgspec.DecodeError:
            who = ("", "", "", None, None)  # still listed: its reason is worth seeing
        at = _iso_micros(why.at)
        self._db.execute(
            _DEAD_LETTER,
            (message.seq, *who, why.reason, why.deliveries, why.last_error, why.stream_seq, at),
        )


def _outcome(event: Event) -> dict[str, object]:
    """The alert columns an event sets, besides its status."""
    match event:
        case Executed():
            return {
                "attempts": event.attempts,
                "client_order_id": event.client_order_id,
                "broker_order_id": event.broker_order_id,
                "fill_price": event.fill_price,
            }
        case Rejected():
            return {"attempts": event.attempts, "last_error": event.reason,
                    "dlq_seq": event.dlq_seq}  # fmt: skip
        case Expired():
            why = event.last_error or f"expired: {event.age:.0f}s old, max {event.max_age:.0f}s"
            return {"attempts": event.attempts, "last_error": why, "dlq_seq": event.dlq_seq}
        case DeadLettered():
            return {"attempts": event.deliveries, "last_error": event.last_error or event.reason,
                    "dlq_seq": event.dlq_seq}  # fmt: skip
        case AttemptFailed():
            return {"attempts": event.attempts, "last_error": event.error}
        case Replayed():
            return {"dlq_seq": event.dlq_seq}


def _iso_micros(value: str) -> int | None:
    from datetime import datetime

    try:
        return micros(datetime.fromisoformat(value))
    except ValueError:
        return None
