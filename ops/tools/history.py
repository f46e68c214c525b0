"""An alert's history: its events folded in order, the stored alert, its trace id."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from nats.js.errors import NotFoundError

from contracts import tracing
from contracts.messages import Alert, Event, alert_decoder, event_decoder, event_kind
from contracts.subjects import ALERTS_STREAM, EVENTS_PREFIX, EVENTS_STREAM, encode_token
from ops.tools.streams import read_all

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext


class Step(msgspec.Struct, frozen=True):
    """One event of the history."""

    kind: str
    event: Event


class History(msgspec.Struct, frozen=True):
    """What happened to one alert."""

    alert_id: str
    account: str
    alert: Alert | None
    trace_id: str | None
    steps: list[Step]
    outcome: str


TERMINAL = ("executed", "rejected", "expired", "dead_lettered")


async def history(js: JetStreamContext, account: str, alert_id: str) -> History:
    """Fold the events of `account`'s alert `alert_id` (an id is unique only within its
    account). Scans the account's part of `EVENTS`: fine for an operator, not for a hot
    path."""
    steps: list[Step] = []
    trace_id: str | None = None
    subjects = f"{EVENTS_PREFIX}.*.{encode_token(account)}.*"
    for msg in await read_all(js, EVENTS_STREAM, subjects):
        try:
            event = event_decoder.decode(msg.data)
        except msgspec.DecodeError:
            continue
        if event.alert_id == alert_id and event.account == account:
            steps.append(Step(event_kind(event), event))
            trace_id = trace_id or tracing.trace_id_of(msg.headers)
    alert = None
    seqs = [s.event.stream_seq for s in steps if hasattr(s.event, "stream_seq")]
    if seqs:
        try:
            raw = await js.get_msg(ALERTS_STREAM, seq=min(seqs), direct=True)
            alert = alert_decoder.decode(raw.data or b"")
            trace_id = tracing.trace_id_of(raw.headers) or trace_id
        except (NotFoundError, msgspec.DecodeError):
            alert = None
    last = next((s.kind for s in reversed(steps) if s.kind in TERMINAL), None)
    outcome = last or ("in progress" if steps else "no events (unknown id, or not processed yet)")
    return History(
        alert_id=alert_id,
        account=account,
        alert=alert,
        trace_id=trace_id,
        steps=steps,
        outcome=outcome,
    )
