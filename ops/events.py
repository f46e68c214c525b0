"""Reading the `EVENTS` stream back: the history every projection folds over."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.messages import Event, event_decoder
from contracts.subjects import EVENTS_STREAM

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext


async def read_events(js: JetStreamContext, subject: str, *, batch: int = 256) -> list[Event]:
    """Every stored event on `subject` (wildcards allowed), oldest first."""
    sub = await js.pull_subscribe(
        subject,
        stream=EVENTS_STREAM,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=30.0,
        ),
    )
    events: list[Event] = []
    try:
        info = await sub.consumer_info()
        remaining = info.num_pending or 0
        while remaining > 0:
            try:
                msgs = await sub.fetch(min(batch, remaining), timeout=2)
            except NatsTimeoutError:
                break
            for msg in msgs:
                remaining = msg.metadata.num_pending
                try:
                    events.append(event_decoder.decode(msg.data))
                except msgspec.DecodeError:
                    continue  # an event kind this version does not know: not ours to show
    finally:
        await sub.unsubscribe()
    return events
