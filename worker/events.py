"""Recording events on `EVENTS`: each fact once (dedup by `Nats-Msg-Id`), after its PubAck."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec
from nats.js.errors import NotFoundError

from contracts import tracing
from contracts.headers import MSG_ID
from contracts.messages import (
    AttemptFailed,
    Event,
    event_decoder,
    event_encoder,
    event_kind,
    event_msg_id,
)
from contracts.subjects import EVENTS_STREAM, event_subject
from ops.platform.acks import Acks
from ops.platform.nats_compat import client_of

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from contracts.messages import Alert

log = logging.getLogger("worker.events")


class EventLog:
    """Publishes events and says whether the server stored them."""

    def __init__(self, js: JetStreamContext, timeout: float = 5.0) -> None:
        self._js = js
        self._timeout = timeout
        # Its own reply inbox and one deadline sweep (ops.platform.acks), not nats-py's
        # `publish_async` and a timer per event: a publish per alert, on the hot path.
        self._acks = Acks(client_of(js), timeout=timeout, sweep_every=min(timeout / 10, 0.05))

    async def record(self, event: Event) -> bool:
        """Publish and await the PubAck; False when it could not be stored (caller retries).

        One deadline for the whole call, the publish included.
        """
        kind = event_kind(event)
        try:
            await self._acks.publish(
                event_subject(kind, event.account, event.symbol),
                event_encoder.encode(event),
                tracing.inject({MSG_ID: event_msg_id(event)}),
            )
        except Exception as exc:  # noqa: BLE001 - unrecorded: leave unacked, server redelivers
            log.warning("could not record %s for %s: %r", kind, event.alert_id, exc)
            return False
        return True

    async def last_failure(self, alert: Alert) -> str | None:
        """The alert's last recorded failure in this round, if the last one on its symbol
        is the alert's (one alert per symbol is in flight at a time)."""
        subject = event_subject("attempt_failed", alert.account, alert.symbol)
        try:
            last = await self._js.get_last_msg(EVENTS_STREAM, subject, direct=True)
        except NotFoundError:
            return None
        try:
            event = event_decoder.decode(last.data or b"")
        except msgspec.DecodeError:
            return None
        if isinstance(event, AttemptFailed) and (event.alert_id, event.replay) == (
            alert.id,
            alert.replay,
        ):
            return event.error
        return None
