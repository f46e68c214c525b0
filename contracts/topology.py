"""The JetStream topology as data: streams and consumers, applied by `ops.platform.provision`.

Per-symbol order: the `ALERTS` stream appends a partition token to every stored
subject (`alerts.in.<account>.<symbol>.<p>`, a server-side subject transform
hashing account and symbol). Each partition has one durable pull consumer with
`max_ack_pending=1`, so alerts of one symbol reach the broker one after another,
while the partitions, and so different symbols, proceed in parallel. Every
worker process pulls from every partition consumer, so any worker can take over.
"""

from __future__ import annotations

from typing import Final

import msgspec

from contracts.subjects import (
    ADVISORIES_STREAM,
    ALERTS_PREFIX,
    ALERTS_STREAM,
    DLQ_PREFIX,
    DLQ_STREAM,
    EVENTS_PREFIX,
    EVENTS_STREAM,
    MAX_DELIVERIES_ADVISORY,
    RESENDS_PREFIX,
    RESENDS_STREAM,
    TERMINATED_ADVISORY,
    partition_filter,
)

DAY: Final = 86_400.0
DLQ_ROUTER: Final = "dlq-router"


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a stream must look like; `ops.platform.provision` makes it so."""

    name: str
    subjects: tuple[str, ...]
    max_age: float
    duplicate_window: float = 0.0
    allow_direct: bool = False
    replicas: int = 1
    # At most this many messages per subject (0: no limit); the oldest goes first.
    max_msgs_per_subject: int = 0
    # (source filter, destination) of a server-side subject transform.
    transform: tuple[str, str] | None = None


class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A durable, explicit-ack pull consumer."""

    stream: str
    durable: str
    filter_subject: str | None = None
    max_deliver: int
    # How long a delivery may stay unacknowledged (a crashed worker's alert comes
    # back after this). Retries use `nak(delay)`, not consumer `backoff`: one mechanism.
    ack_wait: float
    max_ack_pending: int = 1
    replicas: int = 1


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    """Every stream and consumer the pipeline needs."""

    streams: tuple[StreamSpec, ...]
    consumers: tuple[ConsumerSpec, ...]


def partition_durable(partition: int) -> str:
    """The durable name of one partition's consumer."""
    return f"worker-p{partition}"


def topology(
    *,
    partitions: int,
    replicas: int,
    alerts_max_age: float,
    duplicate_window: float,
    resend_window: float,
    max_deliver: int,
    ack_wait: float,
) -> Topology:
    """The streams and consumers for these settings."""
    alerts = StreamSpec(
        name=ALERTS_STREAM,
        subjects=(f"{ALERTS_PREFIX}.*.*",),
        max_age=alerts_max_age,
        duplicate_window=duplicate_window,
        allow_direct=True,
        replicas=replicas,
        transform=(
            f"{ALERTS_PREFIX}.*.*",
            f"{ALERTS_PREFIX}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"
            f".{{{{partition({partitions},1,2)}}}}",
        ),
    )
    events = StreamSpec(
        name=EVENTS_STREAM,
        subjects=(f"{EVENTS_PREFIX}.>",),
        max_age=alerts_max_age,
        duplicate_window=duplicate_window,
        allow_direct=True,
        replicas=replicas,
    )
    dlq = StreamSpec(
        name=DLQ_STREAM,
        subjects=(f"{DLQ_PREFIX}.>",),
        max_age=alerts_max_age,
        # One entry per ALERTS sequence (`Nats-Msg-Id: ALERTS:<seq>`), even if the
        # router crashes between writing it and acking the advisory. DLQ traffic is small.
        duplicate_window=DAY,
        allow_direct=True,
        replicas=replicas,
    )
    advisories = StreamSpec(
        name=ADVISORIES_STREAM,
        subjects=(MAX_DELIVERIES_ADVISORY, TERMINATED_ADVISORY),
        max_age=DAY,  # read within seconds by the router; a day covers an outage
        replicas=replicas,
    )
    resends = StreamSpec(
        name=RESENDS_STREAM,
        subjects=(f"{RESENDS_PREFIX}.>",),
        # A body hash counts as a resend while its entry lives; then the key is free
        # again and the same body is a new alert (ingress.resends).
        max_age=resend_window,
        max_msgs_per_subject=1,
        allow_direct=True,
        replicas=replicas,
    )
    partition_consumers = tuple(
        ConsumerSpec(
            stream=ALERTS_STREAM,
            durable=partition_durable(p),
            filter_subject=partition_filter(p),
            max_deliver=max_deliver,
            ack_wait=ack_wait,
            replicas=replicas,
        )
        for p in range(partitions)
    )
    router = ConsumerSpec(
        stream=ADVISORIES_STREAM,
        durable=DLQ_ROUTER,
        max_deliver=-1,  # an advisory is retried until its DLQ entry is written
        ack_wait=ack_wait,
        max_ack_pending=64,
        replicas=replicas,
    )
    return Topology(
        streams=(alerts, events, dlq, advisories, resends), consumers=(*partition_consumers, router)
    )
