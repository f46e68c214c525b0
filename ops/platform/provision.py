"""Apply the topology to a JetStream server: create what is missing, update what changed.

Idempotent: running it twice, or from several processes at once, converges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final

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
from nats.js.errors import APIError, NotFoundError

from ops.platform.settings import PREFIX, ROLE_JS_API, SettingsError

if TYPE_CHECKING:
    from collections.abc import Collection

    from nats.js.client import JetStreamContext

    from contracts.topology import ConsumerSpec, StreamSpec, Topology

log = logging.getLogger(__name__)

_NOT_ENABLED: Final = 10039  # "JetStream not enabled for account"


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
        max_msgs_per_subject=spec.max_msgs_per_subject or -1,
        num_replicas=spec.replicas,
        subject_transform=transform,
    )


@dataclass
class PinnedConsumerConfig(ConsumerConfig):
    """A consumer config with a `pinned_client` priority group (nats-server >= 2.11).

    nats-py 2.16's `ConsumerConfig` has no such fields; `as_dict` (what `add_consumer`
    sends) serializes every field of the instance, these too. It matters on every
    update, not only at creation: an update that leaves them out turns pinning off
    (checked on nats-server 2.15.1). This goes when nats-py has the fields.
    """

    priority_groups: list[str] | None = None
    priority_policy: str | None = None
    priority_timeout: float | None = None

    def as_dict(self) -> dict[str, object]:
        """The API's JSON fields; the pin timeout in nanoseconds."""
        result = super().as_dict()
        if self.priority_timeout is not None:
            result["priority_timeout"] = round(self.priority_timeout * 1e9)
        return result


def consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    """The nats-py config of a consumer spec."""
    config = ConsumerConfig(
        durable_name=spec.durable,
        filter_subject=spec.filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        num_replicas=spec.replicas,
    )
    if spec.pinned_group is None:
        return config
    return PinnedConsumerConfig(
        **{f.name: getattr(config, f.name) for f in fields(config)},
        priority_groups=[spec.pinned_group],
        priority_policy="pinned_client",
        priority_timeout=spec.pin_timeout,
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


async def missing_streams(
    js: JetStreamContext, topology: Topology, names: Collection[str] | None = None
) -> list[str]:
    """Names of the topology's streams (or of those among `names`) the server lacks.

    Asked by subject through `STREAM.NAMES`, which answers names only: a role that must
    see whether its streams exist is not given `STREAM.INFO`, which would also show what
    they hold (per-subject counts with a filter).
    """
    missing = []
    for stream in topology.streams:
        if names is not None and stream.name not in names:
            continue
        try:
            found = await js.find_stream_name_by_subject(stream.subjects[0])
        except NotFoundError:
            found = None
        except APIError as exc:
            if exc.err_code == _NOT_ENABLED:
                raise SettingsError(
                    f"JetStream is not enabled for this NATS account; a role whose account "
                    f"imports the streams (deploy/nats-server.conf) needs "
                    f"{PREFIX}NATS_JS_API={ROLE_JS_API}"
                ) from None
            raise
        if found != stream.name:
            missing.append(stream.name)
    return missing


async def missing(js: JetStreamContext, topology: Topology, streams: Collection[str]) -> list[str]:
    """What a process that uses `streams` and the topology's consumers on them needs and
    the server lacks, said so an operator can act on it (`alertbridge provision`)."""
    problems = [f"stream {name}" for name in await missing_streams(js, topology, streams)]
    for consumer in topology.consumers:
        if consumer.stream not in streams or f"stream {consumer.stream}" in problems:
            continue
        try:
            await js.consumer_info(consumer.stream, consumer.durable)
        except NotFoundError:
            problems.append(f"consumer {consumer.stream}/{consumer.durable}")
    return problems
