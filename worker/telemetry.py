"""The worker's metrics: outcomes, redeliveries, broker latency, alert age at execution,
consume-loop restarts, and queue depth (pending and ack-pending per consumer, DLQ depth)
polled from the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import TYPE_CHECKING

from nats.errors import Error as NatsError
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from contracts.subjects import ALERTS_STREAM, DLQ_STREAM
from ops.platform.otel_compat import LocalHistogram

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nats.js.client import JetStreamContext
    from opentelemetry.metrics import MeterProvider

    from contracts.topology import Topology

log = logging.getLogger("worker.telemetry")

_LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class WorkerMetrics:
    """Instruments, created once the process's meter provider is installed (or from
    `provider`)."""

    def __init__(self, provider: MeterProvider | None = None) -> None:
        meter = metrics.get_meter("alertbridge.worker", meter_provider=provider)
        # Counted on every delivery: plain integers, read when metrics are collected
        # (a synchronous SDK counter with attributes is costly per add: docs/performance.md).
        self.outcomes: Counter[str] = Counter()
        self.redeliveries = 0
        meter.create_observable_counter(
            "alertbridge.worker.outcomes",
            callbacks=[self._observe_outcomes],
            description="Deliveries by outcome: executed, rejected, expired, retried",
        )
        meter.create_observable_counter(
            "alertbridge.worker.redeliveries",
            callbacks=[lambda _: [Observation(self.redeliveries)]],
            description="Deliveries after the first",
        )
        # Counted here, handed to the SDK when collected (ops.platform.otel_compat).
        self.broker_duration = LocalHistogram(
            meter,
            "alertbridge.worker.broker.duration",
            unit="s",
            description="Broker call latency by broker and outcome",
            boundaries=_LATENCY_BUCKETS,
        )
        self.alert_age = LocalHistogram(
            meter,
            "alertbridge.worker.alert.age",
            unit="s",
            description="Ingress receipt to broker answer: end-to-end latency",
            boundaries=_LATENCY_BUCKETS,
        )
        self.loop_restarts = meter.create_counter(
            "alertbridge.worker.loop_restarts",
            description="Consume loops restarted after a failure, by loop",
        )
        self.depth = QueueDepth()
        meter.create_observable_gauge(
            "alertbridge.consumer.pending",
            callbacks=[self.depth.pending],
            description="Messages not yet delivered, per consumer (queue depth)",
        )
        meter.create_observable_gauge(
            "alertbridge.consumer.ack_pending",
            callbacks=[self.depth.ack_pending],
            description="Messages delivered and not yet acknowledged, per consumer",
        )
        meter.create_observable_gauge(
            "alertbridge.dlq.depth",
            callbacks=[self.depth.dlq],
            description="Entries in the dead-letter stream",
        )

    def _observe_outcomes(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"outcome": k}) for k, n in list(self.outcomes.items())]


class QueueDepth:
    """The server's view, refreshed in the background (gauge callbacks cannot await)."""

    def __init__(self) -> None:
        self._pending: dict[str, int] = {}
        self._ack_pending: dict[str, int] = {}
        self._dlq: int | None = None

    async def poll(self, js: JetStreamContext, topology: Topology, every: float = 5.0) -> None:
        """Refresh until cancelled."""
        durables = [c.durable for c in topology.consumers if c.stream == ALERTS_STREAM]
        while True:
            with contextlib.suppress(NatsError, TimeoutError):
                for durable in durables:
                    info = await js.consumer_info(ALERTS_STREAM, durable)
                    self._pending[durable] = info.num_pending or 0
                    self._ack_pending[durable] = info.num_ack_pending or 0
                self._dlq = (await js.stream_info(DLQ_STREAM)).state.messages
            await asyncio.sleep(every)

    def pending(self, _: CallbackOptions) -> Iterable[Observation]:
        """Gauge callback."""
        return [Observation(v, {"consumer": k}) for k, v in self._pending.items()]

    def ack_pending(self, _: CallbackOptions) -> Iterable[Observation]:
        """Gauge callback."""
        return [Observation(v, {"consumer": k}) for k, v in self._ack_pending.items()]

    def dlq(self, _: CallbackOptions) -> Iterable[Observation]:
        """Gauge callback."""
        return [] if self._dlq is None else [Observation(self._dlq)]
