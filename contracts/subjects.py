"""Subject names and the reversible token encoding that makes any symbol subject-safe.

NATS subject tokens cannot hold `.`, `*`, `>` or whitespace, but symbols do
(`BRK.B`, `NASDAQ:AAPL`, `BTC/USDT`). Tokens are percent-encoded: every byte
outside a readable safe set becomes `%XX`, so `NASDAQ:AAPL` stays readable in
the `nats` CLI while `BRK.B` becomes `BRK%2EB`. `decode_token` inverts it exactly.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, unquote

# Printable ASCII that is safe in a NATS token and keeps symbols readable.
# `.`, `*`, `>`, `%`, whitespace and everything non-ASCII are escaped.
_SAFE: Final = "!#&'()+,-/:;=@[]^_`{|}~"

ALERTS_STREAM: Final = "ALERTS"
EVENTS_STREAM: Final = "EVENTS"
DLQ_STREAM: Final = "DLQ"
ADVISORIES_STREAM: Final = "ADVISORIES"
# Which body hashes the ingress saw within the resend window, and the id each one got.
RESENDS_STREAM: Final = "RESENDS"

ALERTS_PREFIX: Final = "alerts.in"
EVENTS_PREFIX: Final = "events"
DLQ_PREFIX: Final = "dlq.alerts"
RESENDS_PREFIX: Final = "resends"

# The replay service (core NATS request/reply): the workers answer it, in one queue
# group; the console asks it to replay a DLQ entry, by its sequence, and nothing else
# (ops.platform.deadletters, deploy/nats-server.conf).
REPLAY_SERVICE: Final = "alertbridge.replay"
REPLAY_QUEUE: Final = "replayers"

# The server's advisories about the ALERTS consumers (core NATS, fire-and-forget).
MAX_DELIVERIES_ADVISORY: Final = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{ALERTS_STREAM}.*"
TERMINATED_ADVISORY: Final = f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{ALERTS_STREAM}.*"


def encode_token(value: str) -> str:
    """Encode any non-empty string as one NATS subject token."""
    if not value:
        raise ValueError("a subject token cannot be empty")
    return quote(value, safe=_SAFE, errors="strict").replace(".", "%2E")


def decode_token(token: str) -> str:
    """Invert `encode_token`."""
    return unquote(token, errors="strict")


def alert_subject(account: str, symbol: str) -> str:
    """Where the ingress publishes an alert: `alerts.in.<account>.<symbol>`."""
    return f"{ALERTS_PREFIX}.{encode_token(account)}.{encode_token(symbol)}"


def partition_filter(partition: int) -> str:
    """The stored-subject filter of one partition (the stream appends the partition)."""
    return f"{ALERTS_PREFIX}.*.*.{partition}"


def event_subject(kind: str, account: str, symbol: str) -> str:
    """Where the worker records what happened: `events.<kind>.<account>.<symbol>`."""
    return f"{EVENTS_PREFIX}.{kind}.{encode_token(account)}.{encode_token(symbol)}"


def dlq_subject(account: str, symbol: str) -> str:
    """Where a dead alert is kept: `dlq.alerts.<account>.<symbol>`."""
    return f"{DLQ_PREFIX}.{encode_token(account)}.{encode_token(symbol)}"


def resend_subject(account: str, digest: str) -> str:
    """Where the ingress keeps the id of a body without `id`: `resends.<account>.<digest>`."""
    return f"{RESENDS_PREFIX}.{encode_token(account)}.{digest}"


def split_alert_subject(subject: str) -> tuple[str, str]:
    """Return (account, symbol) of a published or stored alert subject."""
    parts = subject.split(".")
    stored = len(parts) == 5 and parts[4].isdigit()  # the stream appends the partition
    if not (len(parts) == 4 or stored) or ".".join(parts[:2]) != ALERTS_PREFIX:
        raise ValueError(f"not an alert subject: {subject!r}")
    return decode_token(parts[2]), decode_token(parts[3])
