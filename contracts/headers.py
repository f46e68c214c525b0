"""Header names used on the streams."""

from typing import Final

MSG_ID: Final = "Nats-Msg-Id"

# W3C trace context travels with the alert (ingress → worker → DLQ → replay).
TRACE_HEADERS: Final = ("traceparent", "tracestate")

# A DLQ entry: the original alert untouched as the payload, and why it died here.
DLQ_REASON: Final = "Alertbridge-Dlq-Reason"
DLQ_DELIVERIES: Final = "Alertbridge-Dlq-Deliveries"
DLQ_LAST_ERROR: Final = "Alertbridge-Dlq-Last-Error"
DLQ_STREAM_SEQ: Final = "Alertbridge-Dlq-Stream-Seq"
DLQ_SUBJECT: Final = "Alertbridge-Dlq-Subject"
DLQ_ALERT_ID: Final = "Alertbridge-Dlq-Alert-Id"
DLQ_AT: Final = "Alertbridge-Dlq-At"
