"""The read models: their SQLite schema, and the typed queries every reader uses.

The projector (`python -m projector`) is the only writer: it folds ALERTS, EVENTS and
DLQ into these tables (projector.fold). The CLI (`alertbridge orders`, `alerts ls`,
`positions`, ...) and the console read them through the functions here, on a
connection opened read-only (`open_readonly`), so a reader can never change a view.

One row per alert `(account, alert_id)`, whatever its replay round; its story is the
`events` table (one row per EVENTS message about it). `orders` holds one row per
broker order (an order the broker already had is not a second fill), `positions` one
row per `(account, symbol)`, `dead_letters` one row per DLQ entry. `applied` is how far
each stream has been folded in: the projector writes it in the same transaction as the
change, so a redelivered message is recognised and changes nothing.

Times are stored as integer microseconds since the epoch (exact, and ordered as
numbers); the result structs carry `datetime`s. Lists are newest first and paginated
by an opaque cursor on a unique key, so a page never repeats or skips a row.
"""

from __future__ import annotations

import base64
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import msgspec

from contracts.messages import Event, event_decoder

DEFAULT_DB: Final = "var/projections.db"
STREAMS: Final = ("ALERTS", "EVENTS", "DLQ")
MAX_LIMIT: Final = 1000
RECEIVED: Final = "received"  # an alert's status before any event about it


T = TypeVar("T")


class BadCursorError(ValueError):
    """A cursor this version did not hand out (or that was tampered with)."""


class Page(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """One page of a list, newest first; `next_cursor` asks for the page after it."""

    items: list[T]
    next_cursor: str | None


class AlertRow(msgspec.Struct, frozen=True, kw_only=True):
    """An alert as the views know it: what it asked for and where it got to."""

    account: str
    alert_id: str
    replay: int  # the replay round it is in (0: never replayed)
    symbol: str
    side: str | None
    quantity: float | None  # None: the account's default size
    order_type: str | None
    received: datetime
    status: str  # received, attempt_failed, executed, rejected, expired, dead_lettered, replayed
    attempts: int
    last_error: str | None
    trace_id: str | None
    client_order_id: str | None
    broker_order_id: str | None
    fill_price: float | None
    alert_seq: int | None  # its ALERTS sequence (of its latest round)
    dlq_seq: int | None  # its DLQ entry, when it has one
    updated: datetime


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One event about an alert, in EVENTS order."""

    seq: int
    kind: str
    at: datetime
    event: Event


class AlertDetail(msgspec.Struct, frozen=True, kw_only=True):
    """An alert and its story."""

    alert: AlertRow
    timeline: list[TimelineEntry]


class OrderRow(msgspec.Struct, frozen=True, kw_only=True):
    """One order the broker took (the first `executed` event of its client order id)."""

    seq: int  # the EVENTS sequence of that event
    account: str
    alert_id: str
    replay: int
    symbol: str
    side: str
    quantity: float
    order_type: str
    client_order_id: str
    broker: str
    broker_order_id: str
    status: str
    fill_price: float | None
    at: datetime


class PositionRow(msgspec.Struct, frozen=True, kw_only=True):
    """The net position of an account in a symbol, from the fills alertbridge recorded
    (average-cost method; a sell below zero opens a short)."""

    account: str
    symbol: str
    quantity: float
    avg_price: float
    realized_pnl: float
    fills: int
    unpriced: int  # fills without a price: counted in `quantity`, not in the P&L
    updated: datetime


class DeadLetterRow(msgspec.Struct, frozen=True, kw_only=True):
    """One DLQ entry as it was written. `replayed_round` is set once an operator replayed
    it (the entry itself is then gone from the stream); a purge leaves no trace to read."""

    dlq_seq: int
    account: str
    alert_id: str
    symbol: str
    side: str | None
    quantity: float | None
    reason: str
    deliveries: int
    last_error: str | None
    alert_seq: int
    at: datetime | None
    replayed_round: int | None


class LagRow(msgspec.Struct, frozen=True, kw_only=True):
    """How far behind one stream the views are: `last` as the projector last read it."""

    stream: str
    applied: int
    last: int
    lag: int
    checked: datetime | None


# --- opening ---------------------------------------------------------------------------


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """The projections file, read-only. FileNotFoundError when no projector made it yet,
    or it has no tables yet (a projector's first start creates the file, then its tables,
    in one transaction: projector.fold)."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{file}: no projections yet (is the projector running?)")
    db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    try:
        db.execute("PRAGMA query_only=ON")
        tables = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'applied'").fetchone()
    except BaseException:
        db.close()
        raise
    if tables is None:
        db.close()
        raise FileNotFoundError(f"{file}: no projections yet (the projector is creating them)")
    return db


def micros(moment: datetime) -> int:
    """A time as stored: microseconds since the epoch (naive times are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1_000_000)


def moment(us: int) -> datetime:
    """A stored time back as an aware UTC datetime."""
    return datetime.fromtimestamp(us / 1_000_000, UTC)


# --- queries ---------------------------------------------------------------------------

_TIMES: Final = frozenset({"received", "updated", "at"})
S = TypeVar("S", bound=msgspec.Struct)


def list_alerts(
    db: sqlite3.Connection,
    *,
    account: str | None = None,
    symbol: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[AlertRow]:
    """Alerts received in [since, until), newest first, filtered by what is given."""
    where, args = _filters(account=account, symbol=symbol, status=status)
    _window("received", since, until, where, args)
    if cursor is not None:
        where.append("(received, account, alert_id) < (?, ?, ?)")
        args += _decode_cursor(cursor, (int, str, str))
    order = "received DESC, account DESC, alert_id DESC"
    items, more = _page(db, AlertRow, "alerts", where, args, order, limit)
    last = items[-1] if more else None
    return Page(
        items=items,
        next_cursor=None
        if last is None
        else _encode_cursor([micros(last.received), last.account, last.alert_id]),
    )


def get_alert(db: sqlite3.Connection, account: str, alert_id: str) -> AlertDetail | None:
    """One alert and its events in order; None when the views do not know it."""
    key = ["account = ?", "alert_id = ?"]
    found = _select(db, AlertRow, "alerts", key, [account, alert_id], "account")
    if not found:
        return None
    timeline = [
        TimelineEntry(seq=seq, kind=kind, at=moment(at), event=event_decoder.decode(body))
        for seq, kind, at, body in db.execute(
            "SELECT seq, kind, at, body FROM events WHERE account = ? AND alert_id = ? "
            "ORDER BY seq",
            (account, alert_id),
        )
    ]
    return AlertDetail(alert=found[0], timeline=timeline)


def list_orders(
    db: sqlite3.Connection,
    *,
    account: str | None = None,
    symbol: str | None = None,
    alert_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[OrderRow]:
    """Orders executed in [since, until), newest first."""
    where, args = _filters(account=account, symbol=symbol, alert_id=alert_id)
    _window("at", since, until, where, args)
    if cursor is not None:
        where.append("seq < ?")
        args += _decode_cursor(cursor, (int,))
    items, more = _page(db, OrderRow, "orders", where, args, "seq DESC", limit)
    return Page(items=items, next_cursor=_encode_cursor([items[-1].seq]) if more else None)


def list_positions(
    db: sqlite3.Connection, *, account: str | None = None, symbol: str | None = None
) -> list[PositionRow]:
    """Every (account, symbol) position, in that order (closed ones too: their P&L)."""
    where, args = _filters(account=account, symbol=symbol)
    return _select(db, PositionRow, "positions", where, args, "account, symbol")


def list_dead_letters(
    db: sqlite3.Connection,
    *,
    account: str | None = None,
    include_replayed: bool = True,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[DeadLetterRow]:
    """DLQ entries, newest first."""
    where, args = _filters(account=account)
    if not include_replayed:
        where.append("replayed_round IS NULL")
    if cursor is not None:
        where.append("dlq_seq < ?")
        args += _decode_cursor(cursor, (int,))
    items, more = _page(db, DeadLetterRow, "dead_letters", where, args, "dlq_seq DESC", limit)
    return Page(items=items, next_cursor=_encode_cursor([items[-1].dlq_seq]) if more else None)


def lag(db: sqlite3.Connection) -> list[LagRow]:
    """Per stream: the last sequence folded in, and the stream's last as last read."""
    found = {
        row[0]: row[1:] for row in db.execute("SELECT stream, seq, last, checked FROM applied")
    }
    rows = []
    for stream in STREAMS:
        seq, last, checked = found.get(stream, (0, 0, None))
        checked_at = None if checked is None else moment(checked)
        lagging = max(last - seq, 0)
        rows.append(LagRow(stream=stream, applied=seq, last=last, lag=lagging, checked=checked_at))
    return rows


def applied(db: sqlite3.Connection) -> dict[str, int]:
    """The last sequence folded in, per stream (0: none yet)."""
    found = dict(db.execute("SELECT stream, seq FROM applied").fetchall())
    return {stream: int(found.get(stream, 0)) for stream in STREAMS}


# --- helpers ---------------------------------------------------------------------------


def _select(
    db: sqlite3.Connection,
    cls: type[S],
    table: str,
    where: list[str],
    args: list[Any],
    order: str,
    limit: int | None = None,
) -> list[S]:
    """Rows of `table` as `cls`, whose fields are the columns. The SQL is put together from
    this module's own names and conditions; every value a caller gave is a parameter."""
    names = [f.name for f in msgspec.structs.fields(cls)]
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    tail = "" if limit is None else f" LIMIT {int(limit)}"
    sql = f"SELECT {', '.join(names)} FROM {table}{condition} ORDER BY {order}{tail}"  # noqa: S608
    return [
        cls(
            **{
                n: moment(v) if n in _TIMES and v is not None else v
                for n, v in zip(names, row, strict=True)
            }
        )
        for row in db.execute(sql, args)
    ]


def _page(
    db: sqlite3.Connection,
    cls: type[S],
    table: str,
    where: list[str],
    args: list[Any],
    order: str,
    limit: int,
) -> tuple[list[S], bool]:
    """One page, and whether there is more after it."""
    size = max(1, min(limit, MAX_LIMIT))
    rows = _select(db, cls, table, where, args, order, size + 1)
    return rows[:size], len(rows) > size


def _filters(**equal: str | None) -> tuple[list[str], list[Any]]:
    where = [f"{column} = ?" for column, value in equal.items() if value is not None]
    return where, [value for value in equal.values() if value is not None]


def _window(
    column: str, since: datetime | None, until: datetime | None, where: list[str], args: list[Any]
) -> None:
    if since is not None:
        where.append(f"{column} >= ?")
        args.append(micros(since))
    if until is not None:
        where.append(f"{column} < ?")
        args.append(micros(until))


def _encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).decode().rstrip("=")


def _decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = msgspec.json.decode(raw, type=list[Any])
    except (ValueError, msgspec.DecodeError):
        raise BadCursorError(f"bad cursor {cursor!r}") from None
    if len(key) != len(types) or not all(type(v) is t for v, t in zip(key, types, strict=True)):
        raise BadCursorError(f"bad cursor {cursor!r}")
    return key
