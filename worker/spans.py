"""The worker's spans, or none.

A process that records spans makes a CONSUMER span per delivery, in the alert's trace:
the producer's context is its parent (one trace per alert, retries included) and also a
link, as the messaging conventions advise for single-message processing; the broker
call is a CLIENT span under it. A process that records no spans (no trace exporter)
makes none: only the producer's context is made current, so events and logs still
carry the alert's trace id, and no delivery pays for a span nobody sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from contracts import tracing

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from opentelemetry.trace import Span

    from worker.delivery import Delivery


_PROCESS: Final = f"process {tracing.ALERTS_TEMPLATE}"


class Spans:
    """Spans for deliveries and broker calls, when `record`; else the trace context only
    (`contracts.tracing.Spans`, as everywhere)."""

    def __init__(self, *, record: bool) -> None:
        self._spans = tracing.Spans("alertbridge.worker", record=record)

    def process(self, d: Delivery) -> AbstractContextManager[Span]:
        """The CONSUMER span of one delivery, current while it is processed."""
        if not self._spans.record:  # the common case: no exporter, only the context
            return self._spans.span(_PROCESS, kind=SpanKind.CONSUMER, parent=d.parent)

        def attributes() -> dict[str, str | int]:
            return {
                tracing.SYSTEM: "nats",
                tracing.OPERATION_NAME: "process",
                tracing.OPERATION_TYPE: "process",
                tracing.DESTINATION: d.subject,
                tracing.DESTINATION_TEMPLATE: tracing.ALERTS_TEMPLATE,
                tracing.MESSAGE_ID: d.msg_id,
                tracing.CONSUMER_GROUP: d.consumer,
                tracing.DELIVERY_COUNT: d.attempts,
            }

        producer = trace.get_current_span(d.parent).get_span_context()
        return self._spans.span(
            _PROCESS,
            kind=SpanKind.CONSUMER,
            parent=d.parent,
            links=[trace.Link(producer)] if producer.is_valid else [],
            attributes=attributes,
        )

    def broker_call(self, broker: str, alert_id: str) -> AbstractContextManager[Span]:
        """The CLIENT span of a broker call."""
        if not self._spans.record:
            return self._spans.span(broker, kind=SpanKind.CLIENT)
        return self._spans.span(
            f"{broker} place order",
            kind=SpanKind.CLIENT,
            attributes={"alertbridge.broker": broker, "alertbridge.alert_id": alert_id},
        )
