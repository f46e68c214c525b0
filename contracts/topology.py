"""The JetStream topology as data: streams and consumers, applied by `ops.platform.provision`.

Per-symbol order: the `ALERTS` stream appends a partition token to every stored
subject (`alerts.in.<account>.<symbol>.<p>`, a server-side subject transform
hashing account and symbol). Each partition has one durable pull consumer with
`max_ack_pending=1`, so alerts of one symbol reach the broker one after another,
while the partitions, and so different symbols, proceed in parallel. Workers share
the partitions: each pulls only its own share, worked out from the live members listed
in the `WORKERS` KV bucket (`worker.membership`), and each partition consumer pins one
puller at a time (a priority group with the `pinned_client` policy), so a partition is
served by one worker, and another takes it over when that one leaves or dies.
"""

from __future__ import annotations

from typing import Final

import msgspec

from contracts.risk import HALTS_BUCKET, HALTS_STREAM, LIMITS_BUCKET, LIMITS_STREAM
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
NOTIFIER: Final = "notifier"
# The notifier acks an event once its notification is in its own store (milliseconds);
# a notifier killed before that gets the event again this long after.
NOTIFIER_ACK_WAIT: Final = 10.0
NOTIFIER_MAX_ACK_PENDING: Final = 256
# The projector's durable on EVENTS and on DLQ (one name: consumer names are per stream).
# It acks a batch once its transaction committed (milliseconds); a projector killed before
# that gets the batch again this long after, and skips what it applied. It has none on
# ALERTS: the worker's account reaches every consumer there (`CONSUMER.MSG.NEXT.ALERTS.*`),
# so the projector reads ALERTS by sequence instead (projector.follow).
PROJECTOR: Final = "projector"
PROJECTOR_ACK_WAIT: Final = 30.0
PROJECTOR_MAX_ACK_PENDING: Final = 2048
# Workers sharing the partitions (worker.membership): each partition consumer's one
# priority group; the pin timeout, after which the server pins another puller when the
# pinned one has stopped asking (a dead worker); and the live-member bucket, whose keys
# expire that long after their last refresh, so a dead worker's share moves as its pin
# lapses.
PARTITION_GROUP: Final = "workers"
PIN_TIMEOUT: Final = 3.0
MEMBERS_BUCKET: Final = "WORKERS"
MEMBERS_STREAM: Final = f"KV_{MEMBERS_BUCKET}"


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
    # A priority group with the `pinned_client` policy: one puller at a time gets the
    # deliveries, until it stops asking for `pin_timeout` seconds (or is unpinned).
    pinned_group: str | None = None
    pin_timeout: float = 0.0


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
    # The kill switch and the risk ledgers (contracts.risk): KV buckets, one value per
    # key, kept until overwritten; direct gets are how every role reads them.
    halts, limits = (
        StreamSpec(
            name=name,
            subjects=(f"$KV.{bucket}.>",),
            max_age=0.0,
            allow_direct=True,
            replicas=replicas,
            max_msgs_per_subject=1,
        )
        for name, bucket in ((HALTS_STREAM, HALTS_BUCKET), (LIMITS_STREAM, LIMITS_BUCKET))
    )
    # The workers' live members (worker.membership): a key per worker, refreshed while it
    # lives; the bucket's max age drops a dead worker's key.
    members = StreamSpec(
        name=MEMBERS_STREAM,
        subjects=(f"$KV.{MEMBERS_BUCKET}.>",),
        max_age=PIN_TIMEOUT,
        duplicate_window=PIN_TIMEOUT,
        allow_direct=True,
        replicas=replicas,
        max_msgs_per_subject=1,
    )
    partition_consumers = tuple(
        ConsumerSpec(
            stream=ALERTS_STREAM,
            durable=partition_durable(p),
            filter_subject=partition_filter(p),
            max_deliver=max_deliver,
            ack_wait=ack_wait,
            replicas=replicas,
            pinned_group=PARTITION_GROUP,
            pin_timeout=PIN_TIMEOUT,
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
    notifier = ConsumerSpec(
        stream=EVENTS_STREAM,
        durable=NOTIFIER,
        max_deliver=-1,  # an event is redelivered until the notifier has taken it in
        ack_wait=NOTIFIER_ACK_WAIT,
        max_ack_pending=NOTIFIER_MAX_ACK_PENDING,
        replicas=replicas,
    )
    projector = tuple(
        ConsumerSpec(
            stream=stream,
            durable=PROJECTOR,
            max_deliver=-1,  # a message is redelivered until its batch is folded in
            ack_wait=PROJECTOR_ACK_WAIT,
            max_ack_pending=PROJECTOR_MAX_ACK_PENDING,
            replicas=replicas,
        )
        for stream in (EVENTS_STREAM, DLQ_STREAM)
    )
    return Topology(
        streams=(alerts, events, dlq, advisories, resends, halts, limits, members),
        consumers=(*partition_consumers, router, notifier, *projector),
    )
