"""W3C trace context on NATS headers, and the messaging span conventions we follow.

nats-py headers are a case-sensitive dict while HTTP-minded code may write
`Traceparent`; OTel's default getter does `carrier.get(key)`, so extraction uses
a case-insensitive getter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from opentelemetry import propagate
from opentelemetry.propagators.textmap import Getter

if TYPE_CHECKING:
    from opentelemetry.context import Context

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
