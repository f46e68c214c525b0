"""Apply the topology to a JetStream server: create what is missing, update what changed.

Idempotent: running it twice, or from several processes at once, converges.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import APIError, NotFoundError

from contracts.topology import partition_durable
from ops.platform.settings import PREFIX, ROLE_JS_API, SettingsError

if TYPE_CHECKING:
    from collections.abc import Collection

    from nats.js.client import JetStreamContext

    from contracts.topology import ConsumerSpec, StreamSpec, Topology

log = logging.getLogger(__name__)

_NOT_ENABLED: Final = 10039  # "JetStream not enabled for account"
# The N of a `{{partition(N,1,2)}}` transform (contracts.topology), as the server keeps it.
_PARTITIONS: Final = re.compile(r"\{\{\s*partition\(\s*(\d+)\s*,")
_PARTITION_DURABLE: Final = re.compile(r"worker-p(\d+)")  # contracts.topology.partition_durable


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
    """Make the server's streams and consumers match `topology`.

    A stream that partitions (ALERTS) changes its partition count only while no alert
    waits in its partition consumers (`PartitionCountError` otherwise); the consumers of
    partitions beyond the count go, each once it holds nothing (`_drop_beyond`).
    """
    for stream in topology.streams:
        config = stream_config(stream)
        try:
            info = await js.stream_info(stream.name)
        except NotFoundError:
            # A fresh server: nothing waits anywhere, so any partition count is safe.
            await js.add_stream(config)
            log.info("created stream %s", stream.name)
            continue
        change = await _partition_change(js, info.config.subject_transform, stream)
        await js.update_stream(config)
        if change is not None:
            log.info("stream %s: %d partitions, were %d", stream.name, change[1], change[0])
    for consumer in topology.consumers:
        # add_consumer creates or updates a durable consumer in place.
        await js.add_consumer(consumer.stream, consumer_config(consumer))
    for stream in topology.streams:
        count = partition_count(stream.transform)
        if count is not None:
            await _drop_beyond(js, stream.name, count)
    log.info(
        "topology applied: %d streams, %d consumers",
        len(topology.streams),
        len(topology.consumers),
    )


class PartitionCountError(SettingsError):
    """The partition count cannot change now: alerts wait, and moving their symbols to
    other partitions could execute a symbol's alerts out of order."""


def partition_count(transform: SubjectTransform | tuple[str, str] | None) -> int | None:
    """N of a subject transform whose destination has `{{partition(N,…)}}` (else None)."""
    if transform is None:
        return None
    dest = transform.dest if isinstance(transform, SubjectTransform) else transform[1]
    found = _PARTITIONS.search(dest or "")
    return int(found[1]) if found else None


async def _partition_change(
    js: JetStreamContext, existing: SubjectTransform | None, spec: StreamSpec
) -> tuple[int, int] | None:
    """(count now, count asked for) when they differ and nothing waits; None when the
    count stays (or the stream does not partition); raise when alerts wait."""
    now, wanted = partition_count(existing), partition_count(spec.transform)
    if now is None or wanted is None or now == wanted:
        return None
    consumers = await partition_consumers(js, spec.name)
    waiting = {k: _waiting(info) for k, info in sorted(consumers.items()) if _waiting(info)}
    if waiting:
        where = ", ".join(f"{partition_durable(k)}: {n}" for k, n in waiting.items())
        raise PartitionCountError(
            f"{spec.name} has {now} partitions and {PREFIX}PARTITIONS asks for {wanted}, but "
            f"{sum(waiting.values())} alerts wait in its partition consumers ({where}). "
            f"Changing the count moves symbols to other partitions, and an alert waiting in "
            f"its old partition could then execute after a newer one of its symbol. Either "
            f"stop the ingress, let the workers finish the queue (`alertbridge status`), and "
            f"provision again; or keep {PREFIX}PARTITIONS={now}. Nothing was changed."
        )
    return now, wanted


async def _drop_beyond(js: JetStreamContext, stream: str, count: int) -> None:
    """Delete `stream`'s partition consumers from index `count` on, from the highest down,
    stopping at one that still holds alerts, which stays with every one below it.

    So the partition consumers always are worker-p0 … worker-p(M-1): a worker can tell the
    server has more partitions than its own count from `worker-p<count>` alone
    (`partitions_beyond`). Only alerts that arrived while the count changed (the ingress
    still running) or that an older release stranded can be held there.
    """
    consumers = await partition_consumers(js, stream)
    deleted: list[int] = []
    for index in sorted((k for k in consumers if k >= count), reverse=True):
        durable = partition_durable(index)
        info = await js.consumer_info(stream, durable)  # now, not as listed
        if held := _waiting(info):
            log.error(
                "consumer %s/%s holds %d alerts stored when %s had more than %d partitions; "
                "kept, with the consumers of partitions %d..%d, and workers with "
                "%sPARTITIONS=%d refuse to start while it exists: run one with "
                "%sPARTITIONS=%d until the queue is empty, then provision again "
                "(docs/topology.md, \"Changing the partition count\")",
                stream, durable, held, stream, count, count, index,
                PREFIX, count, PREFIX, index + 1,
            )  # fmt: skip
            break
        with contextlib.suppress(NotFoundError):  # another provisioning run was first
            await js.delete_consumer(stream, durable)
        deleted.append(index)
    if deleted:
        log.info(
            "deleted consumers %s/%s..%s: %s has %d partitions",
            stream, partition_durable(deleted[-1]), partition_durable(deleted[0]), stream, count,
        )  # fmt: skip


async def partition_consumers(js: JetStreamContext, stream: str) -> dict[int, ConsumerInfo]:
    """`stream`'s partition consumers (`worker-p<k>`) by partition, from every page."""
    found: dict[int, ConsumerInfo] = {}
    seen = 0
    while page := await js.consumers_info(stream, offset=seen):
        seen += len(page)
        for info in page:
            match = _PARTITION_DURABLE.fullmatch(info.name or "")
            if match and partition_durable(int(match[1])) == info.name:
                found[int(match[1])] = info
    return found


def _waiting(info: ConsumerInfo) -> int:
    """Alerts not yet delivered, or delivered and not yet acknowledged."""
    return (info.num_pending or 0) + (info.num_ack_pending or 0)


async def partitions_beyond(js: JetStreamContext, stream: str, count: int) -> int | None:
    """The server's partition count when it is more than `count`, else None.

    For a role that may look up a consumer by name but not list them (the worker): given
    that worker-p0 … worker-p(count-1) exist, the first missing index above them, found by
    doubling and halving (provisioning keeps the consumers contiguous: `_drop_beyond`).
    """
    if not await _exists(js, stream, count):
        return None
    present, step, absent = count, 1, None
    while absent is None:
        probe = present + step
        if await _exists(js, stream, probe):
            present, step = probe, step * 2
        else:
            absent = probe
    while absent - present > 1:
        middle = (present + absent) // 2
        if await _exists(js, stream, middle):
            present = middle
        else:
            absent = middle
    return absent


async def _exists(js: JetStreamContext, stream: str, partition: int) -> bool:
    try:
        await js.consumer_info(stream, partition_durable(partition))
    except NotFoundError:
        return False
    return True


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
