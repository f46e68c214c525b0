"""Header names used on the streams, and the DLQ entry's headers as one struct."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from contracts.subjects import ALERTS_STREAM

if TYPE_CHECKING:
    from collections.abc import Mapping

MSG_ID: Final = "Nats-Msg-Id"

# W3C trace context travels with the alert (ingress → worker → DLQ → replay).
TRACE_HEADERS: Final = ("traceparent", "tracestate")

# A DLQ entry: the original alert untouched as the payload, and why it died here.
DLQ_REASON: Final = "Alertbridge-Dlq-Reason"
DLQ_DELIVERIES: Final = "Alertbridge-Dlq-Deliveries"
DLQ_LAST_ERROR: Final = "Alertbridge-Dlq-Last-Error"
DLQ_STREAM_SEQ: Final = "Alertbridge-Dlq-Stream-Seq"
DLQ_SUBJECT: Final = "Alertbridge-Dlq-Subject"
DLQ_AT: Final = "Alertbridge-Dlq-At"


class DeadLetterHeaders(msgspec.Struct, frozen=True, kw_only=True):
    """Why an alert is in the DLQ: the entry's headers (its payload is the original alert,
    untouched). Written by the worker and its DLQ router, read by the operators' tools:
    this is the one definition of the format."""

    reason: str
    deliveries: int
    stream_seq: int
    subject: str
    at: str  # ISO 8601, when the entry was written
    last_error: str | None = None

    def to_headers(self, original: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers of the entry (message id: one entry per ALERTS sequence), with the
        original's trace context carried over."""
        headers = {
            MSG_ID: f"{ALERTS_STREAM}:{self.stream_seq}",
            DLQ_REASON: one_line(self.reason),
            DLQ_DELIVERIES: str(self.deliveries),
            DLQ_STREAM_SEQ: str(self.stream_seq),
            DLQ_SUBJECT: self.subject,
            DLQ_AT: self.at,
        }
        if self.last_error:
            headers[DLQ_LAST_ERROR] = one_line(self.last_error)
        headers.update({k: v for k, v in (original or {}).items() if k in TRACE_HEADERS})
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> DeadLetterHeaders:
        """Read an entry's headers leniently (an old or damaged entry still lists)."""
        found = headers or {}
        return cls(
            reason=found.get(DLQ_REASON, ""),
            deliveries=_int(found.get(DLQ_DELIVERIES)),
            stream_seq=_int(found.get(DLQ_STREAM_SEQ)),
            subject=found.get(DLQ_SUBJECT, ""),
            at=found.get(DLQ_AT, ""),
            last_error=found.get(DLQ_LAST_ERROR),
        )


def one_line(value: str, limit: int = 500) -> str:
    """A header value (or a +TERM reason): one line, bounded."""
    return " ".join(value.split())[:limit]


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0
