"""What the streams hold, read back for a test's checks: the alerts stored, the executed
events, the DLQ."""

from __future__ import annotations

from dataclasses import dataclass

from nats.errors import NoRespondersError
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

from contracts.messages import Executed, alert_decoder
from contracts.subjects import ALERTS_PREFIX, ALERTS_STREAM
from ops.tools import dlq
from ops.tools.events import read_events
from ops.tools.streams import read_all
from tests.support import eventually

# What reading a stream raises while its leader moves (a cluster test asks again).
UNAVAILABLE = (TimeoutError, APIError, NoRespondersError)


@dataclass(frozen=True)
class Outcome:
    """The executed events and the DLQ entries, as the streams hold them."""

    executed: list[Executed]
    dead: list[dlq.DeadLetter]

    def missing(self, ids: set[str]) -> set[str]:
        """The ids without an executed event."""
        return ids - {e.alert_id for e in self.executed}


async def outcome(js: JetStreamContext) -> Outcome:
    """What the streams say now."""
    events = await read_events(js, "events.executed.>")
    return Outcome([e for e in events if isinstance(e, Executed)], await dlq.entries(js))


async def settle(js: JetStreamContext, ids: set[str], within: float) -> Outcome:
    """The outcome once every id in `ids` executed, as soon as anything is dead-lettered
    (an alert there is not delivered, whatever else happens), or after `within` seconds:
    the caller's checks then say what is missing."""

    async def finished() -> Outcome | None:
        try:
            now = await outcome(js)
        except UNAVAILABLE:
            return None
        return now if now.dead or not now.missing(ids) else None

    try:
        return await eventually(finished, within=within, interval=0.5)
    except TimeoutError:
        return await outcome(js)


async def stored_alert_ids(js: JetStreamContext) -> list[str]:
    """The id of every alert `ALERTS` holds, oldest first."""
    msgs = await read_all(js, ALERTS_STREAM, f"{ALERTS_PREFIX}.>")
    return [alert_decoder.decode(msg.data).id for msg in msgs]
