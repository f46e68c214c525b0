"""The consume loops: one per partition consumer, and the DLQ router's, each supervised.

Each delivery is read once (`Delivery`), decided without I/O (`worker.outcomes`: before
the broker call and after it) and settled by the one outcome → action table,
`worker.outcomes.RULES`. Settling keeps the promises: nothing is acked or termed before
its event is stored, nor termed before its DLQ entry is (a failed step leaves the alert
unacked and the server redelivers it); a retry is a nak with the backoff for its attempt
(the server retries, the worker does not sleep). A redelivery cannot place a second
order: the client order id comes from the alert id. A loop that fails is restarted and
a partition without a live loop makes `/readyz` unready (`worker.supervise`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from opentelemetry.trace import Status, StatusCode

from contracts.messages import Executed
from contracts.subjects import ALERTS_STREAM
from contracts.topology import partition_durable
from worker.delivery import Delivery, Working, term
from worker.dlq import DeadLetters, Router
from worker.errors import RetryableError, TerminalError, backoff
from worker.events import EventLog
from worker.execute import execute
from worker.outcomes import RULES, Outcome, Placed, Settle, after_call, triage
from worker.pull import Puller
from worker.spans import Spans
from worker.supervise import Supervised
from worker.telemetry import QueueDepth, WorkerMetrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from opentelemetry.metrics import MeterProvider

    from worker.accounts import Desk
    from worker.outcomes import Route
    from worker.settings import WorkerSettings

log = logging.getLogger("worker")

# How many alerts one pull request asks for: the partition's max_ack_pending of 1 still
# hands them out one at a time, each after the last one's ack (worker.pull).
PULL_BATCH = 100


class Worker:
    """Pulls from every partition consumer, and routes advisories, until told to stop."""

    def __init__(
        self,
        js: JetStreamContext,
        desk: Desk,
        settings: WorkerSettings,
        *,
        spans: bool = True,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._js = js
        self._desk = desk
        self._settings = settings
        self._spans = Spans(record=spans)
        self._metrics = WorkerMetrics(meter_provider)
        self._stopping = asyncio.Event()
        self._events = EventLog(js)
        self._dlq = DeadLetters(js)
        self._loops: list[Supervised] = []

    @property
    def depth(self) -> QueueDepth:
        """The queue-depth poller behind this worker's gauges."""
        return self._metrics.depth

    def stop(self) -> None:
        """Stop fetching; deliveries already fetched are finished."""
        self._stopping.set()

    def problems(self) -> list[str]:
        """Consume loops down for too long (what /readyz reports; empty: all live)."""
        now = time.monotonic()
        return [problem for loop in self._loops if (problem := loop.problem(now))]

    async def run(self) -> None:
        """Consume until `stop()`; then let in-flight work finish within the grace period."""
        router = Router(self._js, self._dlq, self._events)
        restarts = self._metrics.loop_restarts
        self._loops = [
            Supervised(f"partition-{p}", self._partition(p), restarts)
            for p in range(self._settings.partitions)
        ]
        self._loops.append(
            Supervised(
                "dlq-router",
                lambda: router.run(self._stopping, self._settings.fetch_timeout),
                restarts,
            )
        )
        tasks = [
            asyncio.create_task(loop.run(self._stopping), name=loop.name) for loop in self._loops
        ]
        try:
            await self._stopping.wait()
            await asyncio.wait(tasks, timeout=self._settings.shutdown_grace)
        finally:  # past the grace period, or cancelled
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _partition(self, partition: int) -> Callable[[], Awaitable[None]]:
        """A fresh pull loop on one partition's consumer, for each (re)start."""

        def start() -> Awaitable[None]:
            return Puller(
                self._js,
                stream=ALERTS_STREAM,
                durable=partition_durable(partition),
                batch=PULL_BATCH,
                handle=self.handle,
                stopping=self._stopping,
                fetch_timeout=self._settings.fetch_timeout,
            ).run()

        return start

    async def handle(self, msg: Msg) -> None:
        """Take one delivery to exactly one outcome, in a CONSUMER span of the alert's trace."""
        delivery = Delivery.of(msg)
        if delivery.attempts > 1:
            self._metrics.redeliveries += 1
        with self._spans.process(delivery) as span:
            outcome = await self._decide(delivery)
            span.set_attribute("alertbridge.outcome", outcome.kind)
            await self._settle(delivery, outcome)
        self._metrics.outcomes[outcome.kind] += 1

    async def _decide(self, d: Delivery) -> Outcome:
        """Triage; if it goes ahead, call the broker and decide from its answer."""
        route = triage(d, self._desk, self._settings.max_alert_age, datetime.now(UTC))
        if isinstance(route, Outcome):  # decided before the broker: rejected or expired
            return route
        call: Placed | Exception
        try:
            call = await self._call(d, route)
        except Exception as exc:  # a failure is an outcome too (after_call)
            if not isinstance(exc, RetryableError | TerminalError):
                log.error(
                    "unexpected failure executing alert %s (retrying)", d.alert_id, exc_info=exc
                )
            call = exc
        outcome = after_call(d, route, call, datetime.now(UTC))
        if isinstance(outcome.event, Executed) and outcome.event.latency is not None:
            self._metrics.alert_age.record(outcome.event.latency)
        return outcome

    async def _settle(self, d: Delivery, outcome: Outcome) -> None:
        """Carry out the outcome's row of `RULES`, in order: DLQ entry, event, answer."""
        rule = RULES[outcome.kind]
        if rule.dead_letter and not await self._dead_letter(d, outcome):
            return  # not dead-lettered: left unacked, the server redelivers it
        stored = await self._events.record(outcome.event)
        match rule.settle:
            case Settle.NAK:  # a redelivery loses nothing: it need not wait for the event
                await d.msg.nak(delay=backoff(d.attempts, self._settings.retry_backoff))
            case _ if not stored:
                return  # ack or term only once the event is stored: left unacked
            case Settle.ACK:
                await d.msg.ack()
                log.debug("alert %s %s", d.alert_id, outcome.kind)
            case Settle.TERM:
                await term(d.msg, outcome.reason)
                log.info("alert %s dead-lettered: %s", d.alert_id, outcome.reason)

    async def _dead_letter(self, d: Delivery, outcome: Outcome) -> bool:
        """Store the DLQ entry; False when it could not be."""
        try:
            await self._dlq.write(
                data=d.msg.data,
                original_headers=d.msg.headers,
                subject=d.subject,
                seq=d.seq,
                reason=outcome.reason,
                deliveries=d.attempts,
                last_error=outcome.error,
            )
        except Exception as exc:  # noqa: BLE001 - not dead-lettered yet: the caller leaves it
            log.warning("could not dead-letter ALERTS seq %d: %r", d.seq, exc)
            return False
        return True

    async def _call(self, d: Delivery, route: Route) -> Placed:
        """The broker call: its CLIENT span, its deadline, +WPI beats while it runs, its metric."""
        settings, broker = self._settings, route.broker
        outcome = "error"
        started = time.perf_counter()
        with self._spans.broker_call(broker.name, route.alert.id) as span:
            try:
                with Working(d.msg, every=settings.ack_wait / 3):
                    async with asyncio.timeout(settings.broker_timeout):
                        result, already_done = await execute(
                            route.alert, route.account, broker, settings.default_quantity
                        )
                outcome = "duplicate" if already_done else "ok"
                span.set_attribute("alertbridge.client_order_id", result.client_order_id)
                return Placed(result, already_done)
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
