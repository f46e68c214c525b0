"""The live feed: alerts and what happened to them, as the projector records them, fanned
out to the browsers.

Why from the read models and not from NATS: the console then needs no power to read a
stream at all (deploy/nats-server.conf gives it none), and nats-server does not pass a
message that entered the streams' account through a service import (every role's
publish) on to a stream export, so a core subscription would see nothing. The cost is
the projector's lag plus one poll (`POLL`): the EVENTS table is read by sequence (its
primary key), new alerts by their receipt time (indexed), both from where the last poll
stopped.

A feed is live only: a browser that was away reloads the page. Each listener has a
bounded queue; one that does not keep up is dropped (its EventSource reconnects), so a
slow browser never holds the others back. A listener may also say how long it may go on
(`alive`, asked once a poll): the API ends a feed whose login session has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

import msgspec

from contracts.messages import (
    AttemptFailed,
    DeadLettered,
    Executed,
    Expired,
    Rejected,
    Replayed,
    event_decoder,
)
from ops.platform import projections

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from contextlib import AbstractContextManager

    from contracts.messages import Event

log = logging.getLogger(__name__)
QUEUE: Final = 256  # items a listener may be behind before it is dropped
POLL: Final = 0.3  # seconds between two reads of the read models
BATCH: Final = 500  # events per read
# Alerts are found by receipt time, which is the ingress's clock: one received a little
# before the newest already shown (another ingress, a slower publish) is still found.
OVERLAP: Final = timedelta(seconds=10)


class FeedItem(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the live feed: an alert received, or something that happened to it."""

    kind: str  # received, executed, rejected, expired, dead_lettered, attempt_failed, ...
    account: str
    alert_id: str | None  # None: about an account (halted, resumed)
    symbol: str | None
    at: datetime
    detail: str  # what a person reads: "buy 1 @ 101.5", or why it failed


_feed_encoder: Final = msgspec.json.Encoder()


def encode(item: FeedItem) -> str:
    """The SSE data of an item (one JSON line)."""
    return _feed_encoder.encode(item).decode()


def _detail(event: Event) -> str:
    match event:
        case Executed():
            price = "" if event.fill_price is None else f" @ {event.fill_price:g}"
            return f"{event.side} {event.quantity:g}{price} ({event.broker} {event.status})"
        case Rejected() | DeadLettered():
            return event.reason
        case Expired():
            return f"too old ({event.age:.0f}s > {event.max_age:.0f}s) {event.last_error}".strip()
        case AttemptFailed():
            return f"attempt {event.attempts}: {event.error}"
        case Replayed():
            return f"replayed from DLQ entry {event.dlq_seq} (round {event.replay})"
    return ""  # pragma: no cover - the union is exhausted above


def _event_item(kind: str, body: bytes) -> FeedItem | None:
    try:
        event = event_decoder.decode(body)
    except msgspec.DecodeError:
        return None  # a kind this version does not show
    return FeedItem(
        kind=kind, account=event.account, alert_id=event.alert_id, symbol=event.symbol,
        at=event.at, detail=_detail(event),
    )  # fmt: skip


def _alert_item(row: projections.AlertRow) -> FeedItem:
    size = "default size" if row.quantity is None else f"{row.quantity:g}"
    return FeedItem(
        kind="received", account=row.account, alert_id=row.alert_id, symbol=row.symbol,
        at=row.received, detail=f"{row.side or ''} {size}".strip(),
    )  # fmt: skip


class Cursor:
    """Where the last poll stopped: the EVENTS sequence, and the alerts already shown."""

    def __init__(self) -> None:
        self.event_seq = -1  # -1: not started (the first poll starts at the newest)
        self.received: datetime | None = None
        self.shown: dict[tuple[str, str, int], datetime] = {}

    def poll(self, db: sqlite3.Connection) -> list[FeedItem]:
        """What the read models gained since the last poll, oldest first."""
        if self.event_seq < 0:
            self._start(db)
            return []
        found = self._alerts(db)
        rows = db.execute(
            "SELECT seq, kind, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (self.event_seq, BATCH),
        ).fetchall()
        for seq, kind, body in rows:
            self.event_seq = seq
            if (shown := _event_item(kind, body)) is not None:
                found.append(shown)
        return found

    def _start(self, db: sqlite3.Connection) -> None:
        (last,) = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        self.event_seq = last
        newest = projections.list_alerts(db, limit=1).items
        self.received = newest[0].received if newest else None
        self.shown = {(a.account, a.alert_id, a.replay): a.received for a in newest}

    def _alerts(self, db: sqlite3.Connection) -> list[FeedItem]:
        since = None if self.received is None else self.received - OVERLAP
        rows = projections.list_alerts(db, since=since, limit=projections.MAX_LIMIT).items
        found = []
        for row in reversed(rows):  # oldest first
            key = (row.account, row.alert_id, row.replay)
            if key in self.shown:
                continue
            self.shown[key] = row.received
            found.append(_alert_item(row))
        if rows:
            self.received = max(self.received or rows[0].received, rows[0].received)
        if self.received is not None:  # forget what can no longer come back
            horizon = self.received - OVERLAP
            self.shown = {k: v for k, v in self.shown.items() if v >= horizon}
        return found


class Feed:
    """The poller, and the browsers listening to it."""

    def __init__(self, views: Callable[[], AbstractContextManager[sqlite3.Connection]]) -> None:
        self._views = views
        # Each listener's queue, and what it asks before each poll (None: it lives on).
        self._listeners: dict[asyncio.Queue[FeedItem | None], Callable[[], bool] | None] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Poll the read models until `stop`."""
        self._task = asyncio.create_task(self._run(), name="console-feed")

    async def stop(self) -> None:
        """Stop polling, and end every listener's stream."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for queue in list(self._listeners):
            self._drop(queue)

    async def _run(self) -> None:
        cursor = Cursor()
        while True:
            try:
                with self._views() as db:
                    found = cursor.poll(db)
            except (sqlite3.Error, OSError) as exc:  # none yet (FileNotFoundError), or swapped
                log.debug("live feed: read models not readable (%s); polling on", exc)
                found = []
            self.sweep()
            for shown in found:
                self.publish(shown)
            await asyncio.sleep(POLL)

    def sweep(self) -> None:
        """End the listeners that may no longer go on (the poller, once a poll)."""
        for queue, alive in list(self._listeners.items()):
            if alive is not None and not alive():
                self._drop(queue)

    def publish(self, found: FeedItem) -> None:
        """Hand an item to every listener; drop those that fell behind."""
        for queue in list(self._listeners):
            if queue.qsize() >= QUEUE:
                log.info("a live feed listener fell behind: dropped (its browser reconnects)")
                self._drop(queue)
            else:
                queue.put_nowait(found)

    def _drop(self, queue: asyncio.Queue[FeedItem | None]) -> None:
        if queue in self._listeners:  # once only
            del self._listeners[queue]
            queue.put_nowait(None)  # the end of its stream: the slot kept for it is free

    @contextlib.asynccontextmanager
    async def listening(
        self, alive: Callable[[], bool] | None = None
    ) -> AsyncIterator[asyncio.Queue[FeedItem | None]]:
        """A queue that gets every item from now on (None: the feed stopped, this listener
        fell behind, or `alive` said no; it is asked once a poll, before the poll's items)."""
        # One slot more than an item may take: the end always fits, even behind a full queue.
        queue: asyncio.Queue[FeedItem | None] = asyncio.Queue(QUEUE + 1)
        self._listeners[queue] = alive
        try:
            yield queue
        finally:
            self._listeners.pop(queue, None)
