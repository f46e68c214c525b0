"""From events to messages: take an event in, fold bursts, say what changed, send.

Every decision is made inside one store transaction with the event it comes from, and
the event is acked only after that transaction committed (notifier.run). Sending is
separate: the outbox is worked through target by target, in order, each message
deleted only once its target took it. So an event is never lost (unacked until its
message is owed in the store) and never said twice (a redelivery of an event taken in
is a no-op) - except for the one gap no sender can close: a crash after a target took a
message and before the store heard so sends that message again on restart.

Folding: the first message of an (account, kind) goes out at once; any more within
`fold_interval` are counted, and when the interval is over one summary says how many
("12 more alerts expired on account a in the last minute"). That summary is the next
message of its (account, kind), so at most one goes out per interval.

A broker down: an account's `attempt_failed` events with no `executed` for
`broker_down_after` seconds. Measured on the events' own times while a backlog is read
(so catching up after a restart does not see an outage that was not there), and on the
clock once the backlog is read (so an outage is said while it lasts). Recovery is the
next `executed` of an account whose broker was said to be down.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Final

import msgspec

from contracts.messages import (
    EVENT_KINDS,
    HALT_EVENT_KINDS,
    LOOP_EVENT_KINDS,
    AttemptFailed,
    DeadLettered,
    Executed,
    Expired,
    Rejected,
    event_decoder,
    halt_event_decoder,
    loop_event_decoder,
)
from notifier import notices
from notifier.store import SYSTEM, Store
from ops.platform.notify_settings import send

if TYPE_CHECKING:
    from notifier.notices import Notice
    from notifier.store import Pending
    from ops.platform.notify_settings import NotifyTargets

log = logging.getLogger("notifier")

RETRY_BACKOFF: Final = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # seconds before the nth retry
DLQ_OVER: Final = "dlq_over"
HALT_KINDS: Final = frozenset(HALT_EVENT_KINDS.values())
ALERT_KINDS: Final = frozenset(EVENT_KINDS.values())
WORKER_KINDS: Final = frozenset(LOOP_EVENT_KINDS.values())


class _Head(msgspec.Struct, frozen=True):
    """What every event says about itself: its tag, and when it happened."""

    type: str = ""
    at: datetime | None = None


_head_decoder: Final = msgspec.json.Decoder(_Head)


def backoff(tries: int) -> float:
    """Seconds before the next try of a message that failed `tries` times."""
    return RETRY_BACKOFF[min(tries, len(RETRY_BACKOFF)) - 1]


class Notifier:
    """The notifier's decisions, over its store; no NATS in here."""

    def __init__(self, store: Store, targets: NotifyTargets) -> None:
        self._store = store
        self._targets = targets
        self._config = targets.config
        self.owed = asyncio.Event()  # set when a message was put in the outbox

    @property
    def watches_dlq(self) -> bool:
        """Whether the DLQ's depth is worth reading (a threshold is set)."""
        return self._config.dlq_depth_threshold > 0

    def take_in(self, seq: int, data: bytes, now: float) -> None:
        """Take in the event stored at EVENTS `seq` (in the caller's transaction)."""
        if self._store.is_done(seq):
            return  # a redelivery of an event already taken in
        self._store.mark_done(seq, now)
        try:
            head = _head_decoder.decode(data)
        except msgspec.DecodeError:
            log.warning("EVENTS seq %d: not an event; skipped", seq)
            return
        max_age = self._config.max_event_age
        if max_age and head.at is not None and now - head.at.timestamp() > max_age:
            return  # history: read for the first time long after it happened
        try:
            self._apply(head.type, data, now)
        except msgspec.DecodeError as exc:
            log.warning("EVENTS seq %d (%s): undecodable, skipped: %s", seq, head.type, exc)

    def _apply(self, kind: str, data: bytes, now: float) -> None:
        if kind in ALERT_KINDS:
            match event_decoder.decode(data):
                case Rejected() | Expired() | DeadLettered() as dead:
                    self.emit(notices.dead(dead), now)
                case AttemptFailed() as failed:
                    self._failed(failed, now)
                case Executed() as done:
                    self._executed(done.account, now)
                case _:
                    pass  # replayed: the operator knows
        elif kind in WORKER_KINDS:
            self.emit(notices.loop(loop_event_decoder.decode(data)), now)
        elif kind in HALT_KINDS:
            self.emit(notices.control(halt_event_decoder.decode(data)), now)

    def _failed(self, event: AttemptFailed, now: float) -> None:
        self._store.failure(event.account, event.at.timestamp(), event.error)
        streak = self._store.streak(event.account)
        after = self._config.broker_down_after
        if streak and not streak.down_said and event.at.timestamp() - streak.since >= after:
            self._store.down_said(event.account)
            self.emit(notices.broker_down(streak, after), now)

    def _executed(self, account: str, now: float) -> None:
        streak = self._store.streak(account)
        if streak is None:
            return
        self._store.end_streak(account)
        if streak.down_said:
            self.emit(notices.broker_up(streak, now), now)

    def tick(self, now: float, caught_up: bool) -> None:
        """What time alone decides (in the caller's transaction): folded messages whose
        interval is over, and, once the backlog is read, brokers down for long enough."""
        interval = self._config.fold_interval
        for fold in self._store.due_folds(now - interval):
            account = fold.account or None
            summary = notices.summary(account, fold.kind, fold.folded, interval, fold.latest)
            self._enqueue(summary, now)
            self._store.went_out(fold.account, fold.kind, now)
        if not caught_up:
            return
        after = self._config.broker_down_after
        for streak in self._store.streaks():
            if not streak.down_said and now - streak.since >= after:
                self._store.down_said(streak.account)
                self.emit(notices.broker_down(streak, after), now)

    def dlq_depth(self, depth: int, now: float) -> None:
        """The DLQ's depth now (in the caller's transaction): said once per crossing."""
        threshold = self._config.dlq_depth_threshold
        over = threshold > 0 and depth > threshold
        if over and not self._store.flag(DLQ_OVER):
            self.emit(notices.dlq_depth(depth, threshold), now)
        self._store.set_flag(DLQ_OVER, over)

    def emit(self, notice: Notice, now: float) -> None:
        """Send now, or fold into the next message of its (account, kind)."""
        account = notice.account or SYSTEM
        fold = self._store.fold(account, notice.kind)
        quiet = fold is None or (
            fold.folded == 0 and now - fold.last_sent >= self._config.fold_interval
        )
        if quiet:
            self._enqueue(notice, now)
            self._store.went_out(account, notice.kind, now)
        else:
            self._store.held_back(account, notice.kind, notice.title)

    def _enqueue(self, notice: Notice, now: float) -> None:
        for target in self._targets.for_account(notice.account):
            self._store.enqueue(target.name, notice.title, notice.body, now)
            self.owed.set()

    async def send_due(self, now: float) -> None:
        """Send each target's oldest owed message that is due, all targets at once."""
        heads = [p for p in self._store.heads() if p.next_try <= now]
        await asyncio.gather(*(self._send(p, now) for p in heads))

    async def _send(self, pending: Pending, now: float) -> None:
        target = self._targets.named(pending.target)
        if target is None:  # configured when it was owed, not any more
            log.warning("dropped a message for %s: no longer a target", pending.target)
            with self._store.tx():
                self._store.sent(pending.id)
                self._store.target_took(pending.target)
            return
        try:
            delivered = await send(target, pending.title, pending.body)
        except Exception as exc:  # noqa: BLE001 - any failure of a target: retried later
            log.warning("sending to %s failed: %s", pending.target, type(exc).__name__)
            delivered = False
        with self._store.tx():
            if delivered:
                self._store.sent(pending.id)
                self._store.target_took(pending.target)
            else:
                wait = backoff(pending.tries + 1)
                self._store.failed(pending.id, now + wait)
                self._store.target_failed(pending.target, now)
        if delivered:
            log.info("sent %r to %s", pending.title, pending.target)
        else:
            log.warning(
                "%s did not take a message (try %d); retrying in %gs",
                pending.target,
                pending.tries + 1,
                wait,
            )
