"""Apply the topology to a JetStream server: create what is missing, update what changed.

Idempotent: running it twice, or from several processes at once, converges.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import NotFoundError

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from contracts.topology import ConsumerSpec, StreamSpec, Topology

log = logging.getLogger(__name__)


def stream_config(spec: StreamSpec) -> StreamConfig:
    """The nats-py config of a stream spec."""
    transform = (
        SubjectTransform(src=spec.transform[0], dest=spec.transform[1]) if spec.transform else None
    )
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=spec.max_age,
        duplicate_window=spec.duplicate_window,
        allow_direct=spec.allow_direct,
        num_replicas=spec.replicas,
        subject_transform=transform,
    )


def consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    """The nats-py config of a consumer spec."""
    return ConsumerConfig(
        durable_name=spec.durable,
        filter_subject=spec.filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        num_replicas=spec.replicas,
    )


async def apply(js: JetStreamContext, topology: Topology) -> None:
    """Make the server's streams and consumers match `topology`."""
    for stream in topology.streams:
        config = stream_config(stream)
        try:
            await js.stream_info(stream.name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s", stream.name)
        else:
            await js.update_stream(config)
    for consumer in topology.consumers:
        # add_consumer creates or updates a durable consumer in place.
        await js.add_consumer(consumer.stream, consumer_config(consumer))
    log.info(
        "topology applied: %d streams, %d consumers",
        len(topology.streams),
        len(topology.consumers),
    )


async def missing_streams(js: JetStreamContext, topology: Topology) -> list[str]:
    """Names of the topology's streams the server does not have (for readiness)."""
    missing = []
    for stream in topology.streams:
        try:
            await js.stream_info(stream.name)
        except NotFoundError:
            missing.append(stream.name)
    return missing
