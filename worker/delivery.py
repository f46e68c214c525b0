"""One delivery of an ALERTS message, read once: the alert (or why the bytes are not
one), where it sits in the stream, how often it came, its trace context, and the message
to answer (ack, nak, term, in progress)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import msgspec

from contracts import tracing
from contracts.headers import MSG_ID, one_line
from contracts.messages import Alert, alert_decoder
from contracts.subjects import split_alert_subject
from ops.platform.nats_compat import client_of_msg

if TYPE_CHECKING:
    from datetime import datetime

    from nats.aio.msg import Msg
    from opentelemetry.context import Context

    from contracts.messages import Side


class Asked(TypedDict):
    """What the alert asked for, as a dead end's event tells it (the notifier's message)."""

    side: Side | None
    quantity: float | None


class Facts(TypedDict):
    """The fields every event about one delivery carries."""

    alert_id: str
    account: str
    symbol: str
    at: datetime
    replay: int
    attempts: int
    stream_seq: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the worker decides on, and answers through `msg`."""

    msg: Msg
    alert: Alert | None  # None: the bytes are not an alert (`undecodable` says why)
    undecodable: str
    alert_id: str  # `seq:<n>` for bytes that are not an alert
    account: str
    symbol: str
    seq: int  # in ALERTS
    attempts: int  # this delivery's number, 1 the first time
    subject: str
    consumer: str
    msg_id: str
    parent: Context  # the producer's trace context

    @classmethod
    def of(cls, msg: Msg) -> Delivery:
        """Read a delivery's metadata, headers and payload, once."""
        meta = msg.metadata
        seq = meta.sequence.stream
        headers = msg.headers or {}
        alert: Alert | None
        try:
            alert = alert_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            alert, undecodable = None, f"undecodable alert: {exc}"
            alert_id, (account, symbol) = f"seq:{seq}", split_alert_subject(msg.subject)
        else:
            undecodable, alert_id, account, symbol = "", alert.id, alert.account, alert.symbol
        return cls(
            msg=msg,
            alert=alert,
            undecodable=undecodable,
            alert_id=alert_id,
            account=account,
            symbol=symbol,
            seq=seq,
            attempts=meta.num_delivered,
            subject=msg.subject,
            consumer=meta.consumer or "",
            msg_id=headers.get(MSG_ID, ""),
            parent=tracing.extract(headers),
        )

    def asked(self) -> Asked:
        """The side and quantity the alert asked for (None: not an alert, or unsized)."""
        if self.alert is None:
            return Asked(side=None, quantity=None)
        return Asked(side=self.alert.side, quantity=self.alert.quantity)

    def facts(self, at: datetime) -> Facts:
        """The common fields of an event about this delivery, made `at`."""
        return Facts(
            alert_id=self.alert_id,
            account=self.account,
            symbol=self.symbol,
            at=at,
            replay=self.alert.replay if self.alert is not None else 0,
            attempts=self.attempts,
            stream_seq=self.seq,
        )


async def term(msg: Msg, reason: str) -> None:
    """Terminate with a reason; the reason reaches the MSG_TERMINATED advisory."""
    clean = one_line(reason, 200)
    await client_of_msg(msg).publish(msg.reply, f"+TERM {clean}".encode())


class Working:
    """Tell the server we are still on it (+WPI) while a delivery is slow to finish (a
    slow broker, a slow write), so a short ack_wait brings back only a dead worker's.

    A timer, not a task: most deliveries end long before the first beat is due, and
    a task per delivery would cost every one of them.
    """

    __slots__ = ("_beats", "_every", "_msg", "_timer")

    def __init__(self, msg: Msg, every: float) -> None:
        self._msg = msg
        self._every = every
        self._beats: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._every, self._beat)

    def __exit__(self, *_: object) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._msg.in_progress())
        self._beats.add(task)
        task.add_done_callback(self._beaten)
        self._timer = loop.call_later(self._every, self._beat)

    def _beaten(self, task: asyncio.Task[None]) -> None:
        self._beats.discard(task)
        # A beat lost (e.g. with the connection) costs at worst a redelivery after
        # ack_wait, which the idempotent broker call makes safe: taken, not raised.
        if not task.cancelled():
            task.exception()
