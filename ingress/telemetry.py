"""The ingress's metrics: requests by route and status class, publish latency,
duplicates and 503s.

Counting is on the path of every webhook, so the counts are plain integers that the
OpenTelemetry SDK reads through observable counters when metrics are collected: a
synchronous SDK counter with attributes costs far more per `add` than the rest of the
answer's bookkeeping (figures: docs/performance.md, "Figures behind the code").
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Final

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from ops.platform.otel_compat import LocalHistogram
from ops.platform.telemetry import status_class

if TYPE_CHECKING:
    from collections.abc import Iterable

    from litestar.types import ASGIApp, Message, Receive, Scope, Send


COUNTS_ITSELF: Final = "counts_itself"


class IngressMetrics:
    """Instruments, created once the process's meter provider is installed."""

    def __init__(self) -> None:
        meter = metrics.get_meter("alertbridge.ingress")
        self._answers: Counter[tuple[str, int]] = Counter()
        self.duplicates = 0
        self.unavailable = 0
        meter.create_observable_counter(
            "alertbridge.ingress.requests",
            callbacks=[self._observe_requests],
            description="HTTP requests by route and status",
        )
        meter.create_observable_counter(
            "alertbridge.ingress.duplicates",
            callbacks=[lambda _: [Observation(self.duplicates)]],
            description="Alerts JetStream already had",
        )
        meter.create_observable_counter(
            "alertbridge.ingress.unavailable",
            callbacks=[lambda _: [Observation(self.unavailable)]],
            description="Alerts answered 503 (not stored)",
        )
        # Counted here, handed to the SDK when collected (ops.platform.otel_compat).
        self.publish_duration = LocalHistogram(
            meter,
            "alertbridge.ingress.publish.duration",
            unit="s",
            description="Time from publish to JetStream's acknowledgement",
            boundaries=[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )  # fmt: skip

    def answered(self, route: str, status: int) -> None:
        """Count one answer."""
        self._answers[route, status] += 1

    def _observe_requests(self, _: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                count,
                {"route": route, "status_class": status_class(status), "status": str(status)},
            )
            for (route, status), count in list(self._answers.items())
        ]


class CountRequests(ASGIMiddleware):
    """Counts every answered request by route template, status class and status; a
    handler with the `COUNTS_ITSELF` option (the webhook) counts its own answers."""

    scopes = (ScopeType.HTTP,)
    exclude_opt_key = COUNTS_ITSELF

    def __init__(self, instruments: IngressMetrics) -> None:
        self._metrics = instruments

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Watch the response start go by."""
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await next_app(scope, receive, watch)
        finally:
            self._metrics.answered(scope.get("path_template", "unmatched"), status)
