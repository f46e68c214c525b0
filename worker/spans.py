"""The worker's spans, or none.

A process that records spans makes a CONSUMER span per delivery, in the alert's trace:
the producer's context is its parent (one trace per alert, retries included) and also a
link, as the messaging conventions advise for single-message processing; the broker
call is a CLIENT span under it. A process that records no spans (no trace exporter)
makes none: only the producer's context is made current, so events and logs still
carry the alert's trace id, and no delivery pays for a span nobody sees.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind

from contracts import tracing

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from worker.delivery import Delivery


class Spans:
    """Spans for deliveries and broker calls, when `record`; else the trace context only."""

    def __init__(self, *, record: bool) -> None:
        self._record = record
        self._tracer = trace.get_tracer("alertbridge.worker")

    def process(self, d: Delivery) -> AbstractContextManager[Span]:
        """The CONSUMER span of one delivery, current while it is processed."""
        if not self._record:
            return _Current(d.parent)
        producer = trace.get_current_span(d.parent).get_span_context()
        return self._tracer.start_as_current_span(
            f"process {tracing.ALERTS_TEMPLATE}",
            context=d.parent,
            kind=SpanKind.CONSUMER,
            links=[trace.Link(producer)] if producer.is_valid else [],
            attributes={
                tracing.SYSTEM: "nats",
                tracing.OPERATION_NAME: "process",
                tracing.OPERATION_TYPE: "process",
                tracing.DESTINATION: d.subject,
                tracing.DESTINATION_TEMPLATE: tracing.ALERTS_TEMPLATE,
                tracing.MESSAGE_ID: d.msg_id,
                tracing.CONSUMER_GROUP: d.consumer,
                tracing.DELIVERY_COUNT: d.attempts,
            },
        )

    def broker_call(self, broker: str, alert_id: str) -> AbstractContextManager[Span]:
        """The CLIENT span of a broker call."""
        if not self._record:
            return nullcontext(trace.INVALID_SPAN)
        return self._tracer.start_as_current_span(
            f"{broker} place order",
            kind=SpanKind.CLIENT,
            attributes={"alertbridge.broker": broker, "alertbridge.alert_id": alert_id},
        )


class _Current(AbstractContextManager["Span"]):
    """Makes a context current for a block; the span it yields records nothing."""

    def __init__(self, parent: Context) -> None:
        self._context = parent
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        self._token = context.attach(self._context)
        return trace.INVALID_SPAN

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            context.detach(self._token)
