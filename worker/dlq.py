"""The dead-letter stream: the original alert untouched, plus why it died.

Two writers, one entry per ALERTS sequence (`Nats-Msg-Id: ALERTS:<seq>`):
- the worker, for terminal failures and expired alerts, *before* it terms them;
- the router, for alerts that ran out of deliveries. The server announces those
  only by a core-NATS advisory; the `ADVISORIES` stream captures it, and the
  router's durable consumer fetches the original by sequence (direct get), writes
  the entry, records `dead_lettered`, and only then acks. A crash anywhere in
  between redelivers the advisory, and dedup keeps the entry single; so does a
  failed write, which leaves the advisory unacked.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from nats.js.errors import NotFoundError

from contracts import headers as h
from contracts.messages import (
    Alert,
    DeadLettered,
    advisory_decoder,
    alert_decoder,
)
from contracts.subjects import (
    ADVISORIES_STREAM,
    ALERTS_STREAM,
    dlq_subject,
    split_alert_subject,
)
from contracts.topology import DLQ_ROUTER
from worker.pull import Puller

if TYPE_CHECKING:
    import asyncio

    from nats.aio.msg import Msg
    from nats.js.api import RawStreamMsg
    from nats.js.client import JetStreamContext

    from contracts.messages import Advisory
    from worker.events import EventLog

log = logging.getLogger("worker.dlq")


class DeadLetters:
    """Writes DLQ entries, once per ALERTS sequence."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def write(
        self,
        *,
        data: bytes,
        original_headers: dict[str, str] | None,
        subject: str,
        seq: int,
        reason: str,
        deliveries: int,
        last_error: str | None,
    ) -> tuple[int, bool]:
        """Store the entry; return (DLQ sequence, whether it was already there)."""
        account, symbol = split_alert_subject(subject)
        why = h.DeadLetterHeaders(
            reason=reason,
            deliveries=deliveries,
            stream_seq=seq,
            subject=subject,
            at=datetime.now(UTC).isoformat(),
            last_error=last_error,
        )
        headers = why.to_headers(original_headers)
        ack = await self._js.publish(dlq_subject(account, symbol), data, headers=headers, timeout=5)
        return ack.seq, bool(ack.duplicate)


class Router:
    """Turns max-deliveries (and outside `term`) advisories into DLQ entries."""

    def __init__(self, js: JetStreamContext, dead_letters: DeadLetters, events: EventLog) -> None:
        self._js = js
        self._dlq = dead_letters
        self._events = events

    async def run(self, stopping: asyncio.Event, fetch_timeout: float) -> None:
        """Route advisories until `stopping` is set."""
        await Puller(
            self._js,
            stream=ADVISORIES_STREAM,
            durable=DLQ_ROUTER,
            batch=16,
            handle=self.route,
            stopping=stopping,
            fetch_timeout=fetch_timeout,
        ).run()

    async def route(self, msg: Msg) -> None:
        """Handle one advisory; ack only once its DLQ entry (and event) are stored."""
        try:
            advisory = advisory_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable advisory on %s; dropped", msg.subject)
            await msg.term()
            return
        try:
            original = await self._js.get_msg(ALERTS_STREAM, seq=advisory.stream_seq, direct=True)
        except NotFoundError:
            # e.g. "Message deleted by stream limits": nothing left to keep.
            log.warning("advisory for ALERTS seq %d: the message is gone", advisory.stream_seq)
            await msg.ack()
            return
        if await self._dead_letter(advisory, original, ".MAX_DELIVERIES." in msg.subject):
            await msg.ack()

    async def _dead_letter(
        self, advisory: Advisory, original: RawStreamMsg, max_deliveries: bool
    ) -> bool:
        """Store the DLQ entry and, unless a worker did, its event; False when either failed
        (the advisory stays unacked, comes back, and dedup keeps the entry single)."""
        seq = advisory.stream_seq
        reason = "max_deliveries" if max_deliveries else f"terminated: {advisory.reason}"
        data, subject = original.data or b"", original.subject or ""
        alert = _decode(data)
        last_error = await self._events.last_failure(alert) if alert and max_deliveries else None
        try:
            dlq_seq, duplicate = await self._dlq.write(
                data=data,
                original_headers=original.headers,
                subject=subject,
                seq=seq,
                reason=reason,
                deliveries=advisory.deliveries,
                last_error=last_error,
            )
        except Exception as exc:  # noqa: BLE001 - not dead-lettered yet: the advisory comes back
            log.warning("could not dead-letter ALERTS seq %d: %r", seq, exc)
            return False
        # A worker that terminated the alert wrote the entry and its event first
        # (duplicate here); max deliveries are ours alone, and re-recording is deduped.
        if max_deliveries or not duplicate:
            account, symbol = split_alert_subject(subject)
            event = DeadLettered(
                alert_id=alert.id if alert else f"seq:{seq}",
                account=account,
                symbol=symbol,
                at=datetime.now(UTC),
                replay=alert.replay if alert else 0,
                reason=reason,
                deliveries=advisory.deliveries,
                last_error=last_error,
                stream_seq=seq,
                dlq_seq=dlq_seq,
                side=alert.side if alert else None,
                quantity=alert.quantity if alert else None,
            )
            if not await self._events.record(event):
                return False
        log.info("ALERTS seq %d dead-lettered (%s) as DLQ %d", seq, reason, dlq_seq)
        return True


def _decode(data: bytes) -> Alert | None:
    try:
        return alert_decoder.decode(data)
    except msgspec.DecodeError:
        return None
