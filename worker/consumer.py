"""The consume loops: one per partition consumer, and the DLQ router's, each supervised.

Each delivery is read once (`Delivery`), decided without I/O (`worker.outcomes`: before
the broker call and after it) and settled by the one outcome → action table,
`worker.outcomes.RULES`. Settling keeps the promises: nothing is acked or termed before
its event is stored, nor termed before its DLQ entry is (a failed step leaves the alert
unacked and the server redelivers it); a retry is a nak with the delay the outcome
carries (the server retries, the worker does not sleep). A redelivery cannot place a second
order: the client order id comes from the alert id. A loop that fails is restarted and
a partition without a live loop makes `/readyz` unready (`worker.supervise`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from opentelemetry.trace import Status, StatusCode

from contracts.messages import Executed
from contracts.subjects import ALERTS_STREAM
from contracts.topology import PARTITION_GROUP, partition_durable
from worker.delivery import Delivery, Working, term
from worker.dlq import DeadLetters, Router
from worker.errors import RetryableError, TerminalError
from worker.events import EventLog
from worker.execute import execute, lookup_order
from worker.membership import Membership, Share, member_name
from worker.outcomes import (
    RULES,
    Outcome,
    Placed,
    Settle,
    Stale,
    after_call,
    rejected,
    settle_stale,
    triage,
)
from worker.partitions import PartitionLoops
from worker.pull import Puller, unpin
from worker.replays import ReplayService
from worker.risk import RiskGate
from worker.spans import Spans
from worker.supervise import Supervised
from worker.telemetry import QueueDepth, WorkerMetrics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext
    from opentelemetry.metrics import MeterProvider

    from worker.accounts import Desk
    from worker.brokers.base import OrderResult
    from worker.outcomes import Route
    from worker.settings import WorkerSettings

log = logging.getLogger("worker")

# How many alerts one pull request asks for: the partition's max_ack_pending of 1 still
# hands them out one at a time, each after the last one's ack (worker.pull).
PULL_BATCH = 100


class Worker:
    """Pulls from its share of the partition consumers, and routes advisories, until told
    to stop."""

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
        self._gate = RiskGate(js, settings.default_quantity)
        self._loops: list[Supervised] = []
        self._partitions = PartitionLoops(self._partition, self._unpin, self._metrics.loop_restarts)

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
        loops = [*self._loops, *self._partitions.loops()]
        return [problem for loop in loops if (problem := loop.problem(now))]

    async def run(self) -> None:
        """Consume until `stop()`; then let in-flight work finish within the grace period.

        The partitions pulled are this worker's share (worker.membership): the membership
        loop starts and stops their loops (worker.partitions) as workers join and leave.
        """
        router = Router(self._js, self._dlq, self._events)
        restarts = self._metrics.loop_restarts
        share = Share(Membership(self._js, member_name()), self._settings.partitions)
        self._loops = [
            Supervised(
                "membership", lambda: share.run(self._stopping, self._partitions.assign), restarts
            ),
            Supervised(
                "dlq-router",
                lambda: router.run(self._stopping, self._settings.fetch_timeout),
                restarts,
            ),
            Supervised("replays", lambda: ReplayService(self._js).run(self._stopping), restarts),
        ]
        tasks = [
            asyncio.create_task(loop.run(self._stopping), name=loop.name) for loop in self._loops
        ]
        try:
            await self._stopping.wait()
            tasks += self._partitions.close()
            await asyncio.wait(tasks, timeout=self._settings.shutdown_grace)
        finally:  # past the grace period, or cancelled
            tasks += self._partitions.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _partition(self, partition: int, stopping: asyncio.Event) -> Callable[[], Awaitable[None]]:
        """A fresh pull loop on one partition's consumer, for each (re)start, until
        `stopping` (the partition let go, or the worker stopping)."""

        def start() -> Awaitable[None]:
            return Puller(
                self._js,
                stream=ALERTS_STREAM,
                durable=partition_durable(partition),
                batch=PULL_BATCH,
                handle=self.handle,
                stopping=stopping,
                fetch_timeout=self._settings.fetch_timeout,
                group=PARTITION_GROUP,
            ).run()

        return start

    async def _unpin(self, partition: int) -> None:
        """Hand a partition let go to the worker that waits for it (worker.pull.unpin)."""
        await unpin(
            self._js, stream=ALERTS_STREAM, durable=partition_durable(partition),
            group=PARTITION_GROUP,
        )  # fmt: skip

    async def handle(self, msg: Msg) -> None:
        """Take one delivery to exactly one outcome, in a CONSUMER span of the alert's trace."""
        delivery = Delivery.of(msg)
        if delivery.attempts > 1:
            self._metrics.redeliveries += 1
        # +WPI beats while it is on it, not only during the broker call: the server
        # redelivers a delivery that goes ack_wait without one, to a live worker.
        with self._spans.process(delivery) as span, Working(msg, self._settings.ack_wait / 3):
            outcome = await self._decide(delivery)
            span.set_attribute("alertbridge.outcome", outcome.kind)
            await self._settle(delivery, outcome)
        self._metrics.outcomes[outcome.kind] += 1

    async def _decide(self, d: Delivery) -> Outcome:
        """Triage; if it goes ahead, call the broker and decide from its answer; a stale
        alert's order is looked up at the broker before it is called expired."""
        route = triage(d, self._desk, self._settings.max_alert_age, datetime.now(UTC))
        if isinstance(route, Outcome):  # decided before the broker: rejected or expired
            return route
        if isinstance(route, Stale):
            return await self._look_up(d, route)
        call: Placed | Exception
        try:  # the risk gate (halts, limits) first; state it cannot read is retried
            if (refusal := await self._gate.admit(route, datetime.now(UTC))) is not None:
                return rejected(d, refusal, datetime.now(UTC))
            call = await self._call(d, route)
        except Exception as exc:  # a failure is an outcome too (after_call)
            if not isinstance(exc, RetryableError | TerminalError):
                log.error(
                    "unexpected failure executing alert %s (retrying)", d.alert_id, exc_info=exc
                )
            call = exc
        await self._gate.after(route, call, datetime.now(UTC))
        decided = after_call(d, route, call, datetime.now(UTC), self._settings.retry_backoff)
        if isinstance(decided, Stale):  # no retry fits before the max age any more
            return await self._look_up(d, decided)
        if isinstance(decided.event, Executed) and decided.event.latency is not None:
            self._metrics.alert_age.record(decided.event.latency)
        return decided

    async def _look_up(self, d: Delivery, stale: Stale) -> Outcome:
        """Ask the broker whether an earlier attempt placed a stale alert's order."""
        route = stale.route
        if not stale.last_error:  # a redelivery: its last failure is on record, if any
            with contextlib.suppress(Exception):  # a reason is worth a try, not a delay
                last = await self._events.last_failure(route.alert)
                stale = Stale(route, last or "")
        found: OrderResult | Exception | None
        if not route.broker.can_lookup:
            found = None  # nothing to ask: expired, its reason says the broker cannot tell
            stale = Stale(route, _cannot_tell(route.broker.name, stale.last_error))
        else:
            try:
                async with asyncio.timeout(self._settings.broker_timeout):
                    found = await route.broker.lookup(lookup_order(route.alert, route.account))
            except Exception as exc:  # noqa: BLE001 - the lookup is retried (settle_stale)
                found = exc
        return settle_stale(d, stale, found, datetime.now(UTC), self._settings.retry_backoff)

    async def _settle(self, d: Delivery, outcome: Outcome) -> None:
        """Carry out the outcome's row of `RULES`, in order: DLQ entry, event, answer."""
        rule = RULES[outcome.kind]
        event = outcome.event
        if rule.dead_letter:
            if (dlq_seq := await self._dead_letter(d, outcome)) is None:
                return  # not dead-lettered: left unacked, the server redelivers it
            event = msgspec.structs.replace(event, dlq_seq=dlq_seq)  # `dlq replay <seq>`
        stored = await self._events.record(event)
        match rule.settle:
            case Settle.NAK:  # a redelivery loses nothing: it need not wait for the event
                await d.msg.nak(delay=outcome.delay)
            case _ if not stored:
                return  # ack or term only once the event is stored: left unacked
            case Settle.ACK:
                await d.msg.ack()
                log.debug("alert %s %s", d.alert_id, outcome.kind)
            case Settle.TERM:
                await term(d.msg, outcome.reason)
                log.info("alert %s dead-lettered: %s", d.alert_id, outcome.reason)

    async def _dead_letter(self, d: Delivery, outcome: Outcome) -> int | None:
        """Store the DLQ entry; its DLQ sequence, or None when it could not be stored."""
        try:
            dlq_seq, _ = await self._dlq.write(
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
            return None
        return dlq_seq

    async def _call(self, d: Delivery, route: Route) -> Placed:
        """The broker call: its CLIENT span, its deadline, its metric."""
        settings, broker = self._settings, route.broker
        outcome = "error"
        started = time.perf_counter()
        with self._spans.broker_call(broker.name, route.alert.id) as span:
            try:
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


def _cannot_tell(broker: str, last_error: str) -> str:
    why = f"broker {broker} cannot look orders up: an earlier attempt may have placed it"
    return f"{last_error}; {why}" if last_error else why
