"""Reading the `EVENTS` stream back: the history every projection folds over."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from contracts.messages import Event, event_decoder
from contracts.subjects import EVENTS_STREAM
from ops.tools.streams import read_all

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext


async def read_events(js: JetStreamContext, subject: str = "events.>") -> list[Event]:
    """Every stored event on `subject` (wildcards allowed), oldest first."""
    events: list[Event] = []
    for msg in await read_all(js, EVENTS_STREAM, subject):
        try:
            events.append(event_decoder.decode(msg.data))
        except msgspec.DecodeError:
            continue  # a kind this version does not know yet: not ours to show
    return events
