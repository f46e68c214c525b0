"""W3C trace context on NATS headers, and the messaging span conventions we follow.

nats-py headers are a case-sensitive dict while HTTP-minded code may write
`Traceparent`; OTel's default getter does `carrier.get(key)`, so extraction uses
a case-insensitive getter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Final

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind
    from opentelemetry.util.types import Attributes

SYSTEM: Final = "messaging.system"
OPERATION_NAME: Final = "messaging.operation.name"
OPERATION_TYPE: Final = "messaging.operation.type"
DESTINATION: Final = "messaging.destination.name"
DESTINATION_TEMPLATE: Final = "messaging.destination.template"
MESSAGE_ID: Final = "messaging.message.id"
CONSUMER_GROUP: Final = "messaging.consumer.group.name"
DELIVERY_COUNT: Final = "messaging.nats.message.delivery_count"

# Span names use the subject template: account and symbol would explode cardinality.
ALERTS_TEMPLATE: Final = "alerts.in.{account}.{symbol}"


class _HeaderGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        wanted = key.lower()
        for name, value in carrier.items():
            if name.lower() == wanted:
                return [value]
        return None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_getter: Final = _HeaderGetter()


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context (traceparent, tracestate) to `headers`; return them."""
    propagate.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context a message carries (empty when it carries none)."""
    return propagate.extract(headers or {}, getter=_getter)


def trace_id_of(headers: Mapping[str, str] | None) -> str | None:
    """The trace id in a message's `traceparent`, for operators' tools."""
    found = _getter.get(headers or {}, "traceparent")
    if not found:
        return None
    parts = found[0].split("-")
    return parts[1] if len(parts) == 4 else None


class Spans:
    """How every part of alertbridge makes its spans, in a process that may record none.

    A process without a trace exporter records no spans (README "Looking inside"); it
    still passes the alert's trace context on, so logs and events carry its trace id. So
    each span site has two shapes, and this keeps both in one place:
    - `span`: a span made current for the block; when nothing is recorded, no span, and
      the given context (if any) made current instead;
    - `child`: a span only inside a span that is being recorded (an HTTP request under
      the broker call), else nothing at all.
    Where no span is made, the block gets `INVALID_SPAN` (setting attributes on it does
    nothing), and `attributes` may be a callable so that their cost is paid only when
    a span is made.
    """

    def __init__(
        self, name: str, *, record: bool = True, provider: trace.TracerProvider | None = None
    ) -> None:
        self._tracer = trace.get_tracer(name, tracer_provider=provider)
        self.record = record

    def span(
        self,
        name: str,
        *,
        kind: SpanKind,
        parent: Context | None = None,
        unrecorded: Context | None = None,
        links: Sequence[trace.Link] = (),
        attributes: Attributes | Callable[[], Attributes] = None,
        record_exception: bool = True,
    ) -> AbstractContextManager[Span]:
        """A span of `kind` under `parent` (default: the current context). When this
        process records none, `unrecorded` (default `parent`) is made current instead."""
        if not self.record:
            made_current = unrecorded if unrecorded is not None else parent
            return _Current(made_current) if made_current is not None else _NO_SPAN
        return self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=kind,
            links=links,
            attributes=attributes() if callable(attributes) else attributes,
            record_exception=record_exception,
            set_status_on_exception=record_exception,
        )

    def child(
        self,
        name: str,
        *,
        kind: SpanKind,
        attributes: Attributes | Callable[[], Attributes] = None,
    ) -> AbstractContextManager[Span]:
        """A span under the current one when that one is being recorded; else none."""
        if not trace.get_current_span().is_recording():
            return _NO_SPAN
        return self.span(name, kind=kind, attributes=attributes)


class _Current(AbstractContextManager["Span"]):
    """Makes a context current for a block; the span it yields records nothing."""

    __slots__ = ("_context", "_token")

    def __init__(self, made_current: Context) -> None:
        self._context = made_current
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        self._token = context.attach(self._context)
        return trace.INVALID_SPAN

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            context.detach(self._token)


_NO_SPAN: Final = nullcontext(trace.INVALID_SPAN)
