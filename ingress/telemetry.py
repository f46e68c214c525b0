"""The ingress's metrics and spans: requests by route and status class, publish latency,
duplicates, and the PRODUCER span that carries the trace into NATS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from opentelemetry import metrics

from ops.telemetry import status_class

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send


class IngressMetrics:
    """Instruments, created once the process's meter provider is installed."""

    def __init__(self) -> None:
        meter = metrics.get_meter("alertbridge.ingress")
        self.requests = meter.create_counter(
            "alertbridge.ingress.requests", description="HTTP requests by route and status"
        )
        self.publish_duration = meter.create_histogram(
            "alertbridge.ingress.publish.duration",
            unit="s",
            description="Time from publish to JetStream's acknowledgement",
            explicit_bucket_boundaries_advisory=[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )  # fmt: skip
        self.duplicates = meter.create_counter(
            "alertbridge.ingress.duplicates", description="Alerts JetStream already had"
        )
        self.unavailable = meter.create_counter(
            "alertbridge.ingress.unavailable", description="Alerts answered 503 (not stored)"
        )


class CountRequests(ASGIMiddleware):
    """Counts every answered request by route template, status class and status."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, instruments: IngressMetrics) -> None:
        self._requests = instruments.requests

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
            self._requests.add(
                1,
                {
                    "route": scope.get("path_template", "unmatched"),
                    "status_class": status_class(status),
                    "status": str(status),
                },
            )
