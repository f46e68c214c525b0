"""The consume loop: one task per partition consumer, explicit ack after the broker call.

For each delivery (see `worker.errors` for the outcome → action table):
  undecodable or terminal  → DLQ entry, `rejected` event, then term with the reason
  too old (stale guard)    → DLQ entry, `expired` event, then term; no broker call
  retryable or unknown     → `attempt_failed` event, nak(delay=backoff(n))
  success                  → `executed` event, then ack
Nothing is acked before its event is stored: if recording fails the server
redelivers after `ack_wait`, and the broker call is idempotent, so that is safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from contracts import tracing
from contracts.headers import MSG_ID
from contracts.messages import (
    Alert,
    AttemptFailed,
    Event,
    Executed,
    Expired,
    Rejected,
    alert_decoder,
)
from contracts.subjects import ALERTS_STREAM, split_alert_subject
from contracts.topology import partition_durable
from worker.dlq import DeadLetters, Router
from worker.errors import RetryableError, TerminalError, backoff
from worker.events import EventLog
from worker.execute import execute
from worker.pull import Puller
from worker.telemetry import QueueDepth, WorkerMetrics

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from ops.accounts import Account
    from ops.settings import WorkerSettings
    from worker.accounts import Desk
    from worker.brokers.base import Broker, OrderResult

log = logging.getLogger("worker")

# How many alerts one pull request asks for: the partition's max_ack_pending of 1 still
# hands them out one at a time, each after the last one's ack (worker.pull).
PULL_BATCH = 100


def reference_time(alert: Alert) -> datetime:
    """What an alert's age counts from: its replay, else the earlier of the sender's fire
    time (`timenow`) and the ingress's receipt. A sender's clock can only make an alert
    older, never younger: a `timenow` in the future would otherwise never expire."""
    if alert.replayed_at is not None:
        return alert.replayed_at
    if alert.timenow is not None and alert.timenow < alert.received_at:
        return alert.timenow
    return alert.received_at


class Working:
    """Tell the server we are still on it (+WPI) while a slow broker call runs.

    A timer, not a task: most broker calls end long before the first beat is due, and
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
        task.add_done_callback(self._beats.discard)
        self._timer = loop.call_later(self._every, self._beat)


class Worker:
    """Pulls from every partition consumer, and routes advisories, until told to stop."""

    def __init__(
        self,
        js: JetStreamContext,
        desk: Desk,
        settings: WorkerSettings,
        *,
        with_router: bool = True,
        spans: bool = True,
    ) -> None:
        self._with_router = with_router
        self._spans = spans
        self._tracer = trace.get_tracer("alertbridge.worker")
        self._metrics = WorkerMetrics()
        self._js = js
        self._desk = desk
        self._settings = settings
        self._stopping = asyncio.Event()
        self._events = EventLog(js)
        self._dlq = DeadLetters(js)

    @property
    def depth(self) -> QueueDepth:
        """The queue-depth poller behind this worker's gauges."""
        return self._metrics.depth

    def stop(self) -> None:
        """Stop fetching; deliveries already fetched are finished."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until `stop()`; then let in-flight work finish within the grace period."""
        router = Router(self._js, self._dlq, self._events)
        loops = [
            asyncio.create_task(self._partition_loop(p), name=f"partition-{p}")
            for p in range(self._settings.partitions)
        ]
        loops.append(asyncio.create_task(router.run(self._stopping, self._settings.fetch_timeout)))
        await self._stopping.wait()
        done, pending = await asyncio.wait(loops, timeout=self._settings.shutdown_grace)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("consume loop failed: %r", exc)
        await asyncio.gather(*pending, return_exceptions=True)

    async def _partition_loop(self, partition: int) -> None:
        await Puller(
            self._js, stream=ALERTS_STREAM, durable=partition_durable(partition),
            batch=PULL_BATCH,
            handle=self.handle, stopping=self._stopping,
            fetch_timeout=self._settings.fetch_timeout,
        ).run()  # fmt: skip

    async def handle(self, msg: Msg) -> None:
        """Take one delivery to exactly one outcome, in a CONSUMER span of the alert's trace.

        The producer's context is the parent (one trace per alert, retries included) and
        also a link, as the messaging conventions advise for single-message processing.
        In a process that records no spans (no trace exporter) only the producer's
        context is made current: events and logs still carry the alert's trace id, and
        no delivery pays for a span nobody sees.
        """
        parent = tracing.extract(msg.headers)
        if msg.metadata.num_delivered > 1:
            self._metrics.redeliveries += 1
        if self._spans:
            with self._consumer_span(msg, parent) as span:
                outcome = await self._handle(msg)
                span.set_attribute("alertbridge.outcome", outcome)
        else:
            token = context.attach(parent)
            try:
                outcome = await self._handle(msg)
            finally:
                context.detach(token)
        self._metrics.outcomes[outcome] += 1

    def _consumer_span(self, msg: Msg, parent: Context) -> AbstractContextManager[Span]:
        producer = trace.get_current_span(parent).get_span_context()
        meta = msg.metadata
        return self._tracer.start_as_current_span(
            f"process {tracing.ALERTS_TEMPLATE}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=[trace.Link(producer)] if producer.is_valid else [],
            attributes={
                tracing.SYSTEM: "nats",
                tracing.OPERATION_NAME: "process",
                tracing.OPERATION_TYPE: "process",
                tracing.DESTINATION: msg.subject,
                tracing.DESTINATION_TEMPLATE: tracing.ALERTS_TEMPLATE,
                tracing.MESSAGE_ID: (msg.headers or {}).get(MSG_ID, ""),
                tracing.CONSUMER_GROUP: meta.consumer or "",
                tracing.DELIVERY_COUNT: meta.num_delivered,
            },
        )

    async def _handle(self, msg: Msg) -> str:
        meta = msg.metadata
        attempts, seq = meta.num_delivered, meta.sequence.stream
        try:
            alert = alert_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            account_name, symbol = split_alert_subject(msg.subject)
            reason = f"undecodable alert: {exc}"
            rejected = Rejected(
                alert_id=f"seq:{seq}", account=account_name, symbol=symbol, at=datetime.now(UTC),
                reason=reason, attempts=attempts, stream_seq=seq,
            )  # fmt: skip
            await self._dead_end(msg, rejected, f"terminated: {reason}", reason)
            return "rejected"
        try:
            account, broker = self._desk.for_alert(alert)
        except TerminalError as exc:
            return await self._reject(msg, alert, exc)
        started = datetime.now(UTC)
        age = (started - reference_time(alert)).total_seconds()
        max_age = self._settings.max_alert_age
        if account.max_alert_age is not None:
            max_age = account.max_alert_age
        if max_age and age > max_age:
            expired = Expired(
                alert_id=alert.id, account=alert.account, symbol=alert.symbol, at=started,
                replay=alert.replay, age=age, max_age=max_age, attempts=attempts, stream_seq=seq,
            )  # fmt: skip
            await self._dead_end(msg, expired, "expired", f"{age:.1f}s old, max {max_age:g}s")
            return "expired"
        try:
            result, already_done = await self._execute(msg, alert, account, broker)
        except TerminalError as exc:
            return await self._reject(msg, alert, exc)
        except Exception as exc:  # noqa: BLE001 - unknown failures are retried (see errors)
            await self._retry(msg, alert, seq, attempts, exc)
            return "retried"
        done = datetime.now(UTC)
        executed = Executed(
            alert_id=alert.id, account=alert.account, symbol=alert.symbol, at=done,
            replay=alert.replay, side=result.side, quantity=result.quantity,
            order_type=alert.order_type, client_order_id=result.client_order_id,
            broker=broker.name, broker_order_id=result.broker_order_id,
            status=result.status, fill_price=result.fill_price, attempts=attempts,
            stream_seq=seq, already_done=already_done,
            latency=(done - (alert.replayed_at or alert.received_at)).total_seconds(),
        )  # fmt: skip
        self._metrics.alert_age.record(executed.latency or 0.0)
        if await self._events.record(executed):
            await msg.ack()
            log.debug("alert %s executed as %s", alert.id, result.client_order_id)
        return "executed"

    async def _reject(self, msg: Msg, alert: Alert, exc: TerminalError) -> str:
        meta = msg.metadata
        rejected = Rejected(
            alert_id=alert.id, account=alert.account, symbol=alert.symbol,
            at=datetime.now(UTC), replay=alert.replay, reason=str(exc),
            attempts=meta.num_delivered, stream_seq=meta.sequence.stream,
        )  # fmt: skip
        await self._dead_end(msg, rejected, f"terminated: {exc}", str(exc))
        return "rejected"

    async def _execute(
        self, msg: Msg, alert: Alert, account: Account, broker: Broker
    ) -> tuple[OrderResult, bool]:
        settings = self._settings
        outcome = "error"
        started = time.perf_counter()
        with self._broker_span(broker.name, alert.id) as span:
            try:
                with Working(msg, every=settings.ack_wait / 3):
                    async with asyncio.timeout(settings.broker_timeout):
                        result, already_done = await execute(
                            alert, account, broker, settings.default_quantity
                        )
                outcome = "duplicate" if already_done else "ok"
                span.set_attribute("alertbridge.client_order_id", result.client_order_id)
                return result, already_done
            except TimeoutError:
                outcome = "timeout"
                raise RetryableError(
                    f"broker call timed out after {settings.broker_timeout:g}s"
                ) from None
            except TerminalError:
                outcome = "rejected"
                raise
            except RetryableError:
                outcome = "retryable"
                raise
            finally:
                if outcome not in ("ok", "duplicate"):
                    span.set_status(Status(StatusCode.ERROR, outcome))
                self._metrics.broker_duration.record(
                    time.perf_counter() - started, {"broker": broker.name, "outcome": outcome}
                )

    def _broker_span(self, broker: str, alert_id: str) -> AbstractContextManager[Span]:
        """The CLIENT span of the broker call (none in a process that records no spans)."""
        if not self._spans:
            return nullcontext(trace.INVALID_SPAN)
        return self._tracer.start_as_current_span(
            f"{broker} place order",
            kind=SpanKind.CLIENT,
            attributes={"alertbridge.broker": broker, "alertbridge.alert_id": alert_id},
        )

    async def _retry(self, msg: Msg, alert: Alert, seq: int, attempts: int, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, RetryableError):
            log.exception("unexpected failure executing alert %s (retrying)", alert.id)
        failed = AttemptFailed(
            alert_id=alert.id, account=alert.account, symbol=alert.symbol, at=datetime.now(UTC),
            replay=alert.replay, error=error, attempts=attempts, stream_seq=seq,
        )  # fmt: skip
        await self._events.record(failed)
        await msg.nak(delay=backoff(attempts, self._settings.retry_backoff))

    async def _dead_end(self, msg: Msg, event: Event, reason: str, error: str) -> None:
        """DLQ entry first, then the event, then term: a crash in between redelivers."""
        meta = msg.metadata
        try:
            await self._dlq.write(
                data=msg.data, original_headers=msg.headers, subject=msg.subject,
                seq=meta.sequence.stream, reason=reason, deliveries=meta.num_delivered,
                last_error=error,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - not dead-lettered yet: leave it unacked
            log.warning("could not dead-letter ALERTS seq %d: %r", meta.sequence.stream, exc)
            return
        if await self._events.record(event):
            await _term(msg, reason)
            log.info("alert %s dead-lettered: %s", event.alert_id, reason)


async def _term(msg: Msg, reason: str) -> None:
    """Terminate with a reason; the reason reaches the MSG_TERMINATED advisory."""
    clean = " ".join(reason.split())[:200]
    await msg._client.publish(msg.reply, f"+TERM {clean}".encode())
