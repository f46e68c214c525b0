"""The consume loop: one task per partition consumer, explicit ack after the broker call.

For each delivery: decode → execute → record the event (awaiting its PubAck) →
ack / nak(delay) / term. If recording the event fails nothing is acked and the
server redelivers after `ack_wait`; the broker call is idempotent, so that is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError

from contracts.headers import MSG_ID
from contracts.messages import (
    Alert,
    AttemptFailed,
    Event,
    Executed,
    Rejected,
    alert_decoder,
    event_kind,
    event_msg_id,
)
from contracts.subjects import ALERTS_STREAM, event_subject, split_alert_subject
from contracts.topology import partition_durable
from worker.errors import RetryableError, TerminalError, backoff
from worker.execute import execute

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from ops.settings import WorkerSettings
    from worker.brokers.base import Broker

log = logging.getLogger("worker")
_event_encoder = msgspec.json.Encoder()


class Worker:
    """Pulls from every partition consumer until told to stop."""

    def __init__(self, js: JetStreamContext, broker: Broker, settings: WorkerSettings) -> None:
        self._js = js
        self._broker = broker
        self._settings = settings
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop fetching; deliveries already fetched are finished."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until `stop()`; then let in-flight work finish within the grace period."""
        loops = [
            asyncio.create_task(self._partition_loop(p), name=f"partition-{p}")
            for p in range(self._settings.partitions)
        ]
        await self._stopping.wait()
        done, pending = await asyncio.wait(loops, timeout=self._settings.shutdown_grace)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("partition loop failed: %r", exc)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)

    async def _partition_loop(self, partition: int) -> None:
        sub = await self._js.pull_subscribe_bind(
            durable=partition_durable(partition), stream=ALERTS_STREAM
        )
        timeout = self._settings.fetch_timeout
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(1, timeout=timeout)
                except NatsTimeoutError:
                    continue
                except Exception as exc:  # noqa: BLE001 - the loop must outlive NATS hiccups
                    log.warning("fetch on partition %d failed: %r", partition, exc)
                    await asyncio.sleep(min(timeout, 1.0))
                    continue
                for msg in msgs:
                    await self._handle(msg)
        finally:
            # A pull subscription left to `drain()` waits on status messages nobody
            # reads (drain then times out after 30 s): end it here.
            await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        meta = msg.metadata
        attempts, seq = meta.num_delivered, meta.sequence.stream
        try:
            alert = alert_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            await self._poison(msg, seq, attempts, f"undecodable alert: {exc}")
            return
        now = datetime.now(UTC)
        try:
            result, already_done = await execute(
                alert, self._broker, self._settings.default_quantity
            )
        except TerminalError as exc:
            event: Event = Rejected(
                alert_id=alert.id, account=alert.account, symbol=alert.symbol,
                reason=str(exc), attempts=attempts, stream_seq=seq, at=now,
            )  # fmt: skip
            if await self._record(event):
                await _term(msg, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - unknown failures are retried (see errors)
            await self._retry(msg, alert, seq, attempts, exc)
            return
        event = Executed(
            alert_id=alert.id, account=alert.account, symbol=alert.symbol,
            side=result.side, quantity=result.quantity, order_type=alert.order_type,
            client_order_id=result.client_order_id, broker=self._broker.name,
            broker_order_id=result.broker_order_id, status=result.status,
            fill_price=result.fill_price, attempts=attempts, stream_seq=seq,
            at=datetime.now(UTC), already_done=already_done,
        )  # fmt: skip
        if await self._record(event):
            await msg.ack()
            log.info("alert %s executed as %s", alert.id, result.client_order_id)

    async def _retry(self, msg: Msg, alert: Alert, seq: int, attempts: int, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, RetryableError):
            log.exception("unexpected failure executing alert %s (retrying)", alert.id)
        await self._record(
            AttemptFailed(
                alert_id=alert.id,
                account=alert.account,
                symbol=alert.symbol,
                error=error,
                attempts=attempts,
                stream_seq=seq,
                at=datetime.now(UTC),
            )
        )
        await msg.nak(delay=backoff(attempts, self._settings.retry_backoff))

    async def _poison(self, msg: Msg, seq: int, attempts: int, reason: str) -> None:
        account, symbol = split_alert_subject(msg.subject)
        event = Rejected(
            alert_id=f"seq:{seq}", account=account, symbol=symbol, reason=reason,
            attempts=attempts, stream_seq=seq, at=datetime.now(UTC),
        )  # fmt: skip
        if await self._record(event):
            await _term(msg, reason)

    async def _record(self, event: Event) -> bool:
        """Publish the event and wait for its PubAck; False when it could not be stored."""
        account, symbol = event.account, event.symbol
        try:
            await self._js.publish(
                event_subject(event_kind(event), account, symbol),
                _event_encoder.encode(event),
                timeout=5,
                headers={MSG_ID: event_msg_id(event)},
            )
        except Exception as exc:  # noqa: BLE001 - unrecorded: leave unacked, server redelivers
            log.warning("could not record %s for %s: %r", event_kind(event), event.alert_id, exc)
            return False
        return True


async def _term(msg: Msg, reason: str) -> None:
    """Terminate with a reason; the reason reaches the MSG_TERMINATED advisory."""
    clean = " ".join(reason.split())[:200]
    await msg._client.publish(msg.reply, f"+TERM {clean}".encode())
