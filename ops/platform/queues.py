"""The streams and consumers as the server sees them right now: `alertbridge status`
and the console's queue health (`GET /api/status`) share it.

Read from the JetStream API directly (`<api>.STREAM.INFO.<stream>`, `…CONSUMER.LIST.…`):
its answers carry the first/last message times that nats-py's models drop. `js_api` is
the connection's JetStream API prefix (`$JS.API` for the ops role; the console imports
these two requests under its own, deploy/nats-server.conf).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from contracts.subjects import ADVISORIES_STREAM, ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM
from ops.platform.settings import DEFAULT_JS_API

if TYPE_CHECKING:
    from nats.aio.client import Client

STREAMS = (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM, ADVISORIES_STREAM)


class _State(msgspec.Struct):
    messages: int = 0
    bytes: int = 0
    first_ts: datetime | None = None
    last_ts: datetime | None = None


class _StreamInfo(msgspec.Struct):
    state: _State = msgspec.field(default_factory=_State)


class _Delivered(msgspec.Struct):
    last_active: datetime | None = None


class _ConsumerConfig(msgspec.Struct):
    durable_name: str | None = None


class _ConsumerInfo(msgspec.Struct, kw_only=True):
    name: str
    config: _ConsumerConfig = msgspec.field(default_factory=_ConsumerConfig)
    stream_name: str
    num_pending: int = 0
    num_ack_pending: int = 0
    num_redelivered: int = 0
    num_waiting: int = 0
    delivered: _Delivered = msgspec.field(default_factory=_Delivered)


class _ConsumerList(msgspec.Struct):
    consumers: list[_ConsumerInfo] = msgspec.field(default_factory=list)


class StreamStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One stream."""

    name: str
    messages: int
    bytes: int
    first: datetime | None
    last: datetime | None


class ConsumerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One durable consumer: its queue depth and liveliness."""

    stream: str
    name: str
    pending: int
    ack_pending: int
    redelivered: int
    waiting: int
    last_active: datetime | None


class Status(msgspec.Struct, frozen=True):
    """Everything `alertbridge status` shows."""

    streams: list[StreamStatus]
    consumers: list[ConsumerStatus]
    dlq_depth: int
    missing: list[str]


class _ApiError(msgspec.Struct):
    code: int = 0
    description: str = ""


class _Answer(msgspec.Struct):
    error: _ApiError | None = None


async def _api(nc: Client, subject: str) -> bytes | None:
    reply = await nc.request(subject, b"", timeout=3)
    if msgspec.json.decode(reply.data, type=_Answer).error is not None:
        return None
    return reply.data


async def status(nc: Client, js_api: str = DEFAULT_JS_API) -> Status:
    """Collect the status of every alertbridge stream and its consumers."""
    streams, consumers, missing = [], [], []
    for name in STREAMS:
        raw = await _api(nc, f"{js_api}.STREAM.INFO.{name}")
        if raw is None:
            missing.append(name)
            continue
        state = msgspec.json.decode(raw, type=_StreamInfo).state
        streams.append(
            StreamStatus(
                name=name,
                messages=state.messages,
                bytes=state.bytes,
                first=_moment(state.first_ts),
                last=_moment(state.last_ts),
            )
        )
        listed = await _api(nc, f"{js_api}.CONSUMER.LIST.{name}")
        for c in msgspec.json.decode(listed or b"{}", type=_ConsumerList).consumers:
            if c.config.durable_name:  # ephemeral ones are readers like this command
                consumers.append(_consumer(c))
    dlq = next((s.messages for s in streams if s.name == DLQ_STREAM), 0)
    consumers.sort(key=lambda c: (c.stream, _natural(c.name)))
    return Status(streams=streams, consumers=consumers, dlq_depth=dlq, missing=missing)


def _moment(value: datetime | None) -> datetime | None:
    """The server says 0001-01-01 for "never" (an empty stream)."""
    return value if value is not None and value.year > 1970 else None


def _consumer(c: _ConsumerInfo) -> ConsumerStatus:
    return ConsumerStatus(
        stream=c.stream_name,
        name=c.name,
        pending=c.num_pending,
        ack_pending=c.num_ack_pending,
        redelivered=c.num_redelivered,
        waiting=c.num_waiting,
        last_active=c.delivered.last_active,
    )


def _natural(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    tail = name[len(head) :]
    return head, int(tail) if tail else -1
