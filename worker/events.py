"""Recording events on `EVENTS`: each fact once (dedup by `Nats-Msg-Id`), after its PubAck."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from contracts import tracing
from contracts.headers import MSG_ID
from contracts.messages import Event, event_encoder, event_kind, event_msg_id
from contracts.subjects import event_subject

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

log = logging.getLogger("worker.events")


class EventLog:
    """Publishes events and says whether the server stored them."""

    def __init__(self, js: JetStreamContext, timeout: float = 5.0) -> None:
        self._js = js
        self._timeout = timeout

    async def record(self, event: Event) -> bool:
        """Publish and await the PubAck; False when it could not be stored (caller retries).

        One deadline for the whole call, the wait for a pending-publish slot included
        (`js.publish` would start a task per event for its timeout).
        """
        kind = event_kind(event)
        try:
            async with asyncio.timeout(self._timeout):
                future = await self._js.publish_async(
                    event_subject(kind, event.account, event.symbol),
                    event_encoder.encode(event),
                    headers=tracing.inject({MSG_ID: event_msg_id(event)}),
                )
                await future
        except Exception as exc:  # noqa: BLE001 - unrecorded: leave unacked, server redelivers
            log.warning("could not record %s for %s: %r", kind, event.alert_id, exc)
            return False
        return True
