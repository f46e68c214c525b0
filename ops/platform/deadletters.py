"""Dead-lettered alerts, read and replayed: the one implementation the operators' CLI
(`alertbridge dlq`, ops.tools.dlq) and the console (`POST /api/dlq/{id}/replay`) share.

A replay re-publishes the original alert with `replay` + 1 and a new
`Nats-Msg-Id` (`replay.<n>.alert.<account>.<id>`, a form no webhook can produce:
contracts.messages.replay_msg_id), so the same replay run twice stores it once;
the alert id, and so the broker's client order id, stay the same: an alert whose
order did go through is found by the broker, never doubled. Its age counts from
the replay. Every replay is a `replayed` event; the DLQ entry is removed only once
the replay's own message is stored (a duplicate PubAck must point at this very alert
and round, else the entry stays and the replay fails).

It needs, on the JetStream API it is given: a direct get on DLQ and ALERTS, a publish
on `alerts.in.>` and `events.replayed.>`, and deleting a DLQ message (the ops role has
them all; deploy/nats-server.conf gives the console exactly these).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from nats.js.errors import NotFoundError

from contracts import headers as h
from contracts.messages import (
    Alert,
    Replayed,
    alert_decoder,
    alert_encoder,
    event_encoder,
    event_msg_id,
    replay_msg_id,
)
from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, alert_subject, event_subject

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

# What a replay does, in the words the console's API and pages show before and after one.
REPLAY_NOTE = (
    "A replay sends the original alert to the workers again, with the same broker "
    "idempotency key (an order that did go through is never doubled); its age clock "
    "restarts at the replay, and the DLQ entry is removed once the replay is stored."
)


class DlqError(Exception):
    """An operator's request on the DLQ cannot be done (the message says why)."""


class NoEntryError(DlqError):
    """There is no DLQ entry with that sequence (never was, replayed, or purged)."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One DLQ entry as operators see it."""

    dlq_seq: int
    alert_id: str
    account: str
    symbol: str
    reason: str
    deliveries: int
    last_error: str | None
    stream_seq: int
    subject: str
    at: str
    alert: Alert | None


def decode_entry(seq: int, data: bytes, headers: dict[str, str] | None) -> DeadLetter:
    """A DLQ message as an entry; an undecodable alert leaves `alert` None."""
    why = h.DeadLetterHeaders.from_headers(headers)
    try:
        alert: Alert | None = alert_decoder.decode(data)
    except msgspec.DecodeError:
        alert = None
    return DeadLetter(
        dlq_seq=seq,
        alert_id=alert.id if alert else "",
        account=alert.account if alert else "",
        symbol=alert.symbol if alert else "",
        reason=why.reason,
        deliveries=why.deliveries,
        last_error=why.last_error,
        stream_seq=why.stream_seq,
        subject=why.subject,
        at=why.at,
        alert=alert,
    )


async def _get(js: JetStreamContext, dlq_seq: int) -> tuple[DeadLetter, dict[str, str]]:
    try:
        raw = await js.get_msg(DLQ_STREAM, seq=dlq_seq, direct=True)
    except NotFoundError:
        raise NoEntryError(f"no DLQ entry {dlq_seq}") from None
    return decode_entry(dlq_seq, raw.data or b"", raw.headers), raw.headers or {}


async def entry(js: JetStreamContext, dlq_seq: int) -> DeadLetter:
    """One entry by its DLQ sequence."""
    return (await _get(js, dlq_seq))[0]


async def replay(js: JetStreamContext, dlq_seq: int) -> Replayed:
    """Re-queue one entry's alert; record the replay; remove the entry."""
    dead, stored_headers = await _get(js, dlq_seq)
    if dead.alert is None:
        raise DlqError(f"DLQ entry {dlq_seq} holds no decodable alert; it cannot be replayed")
    now = datetime.now(UTC)
    again = msgspec.structs.replace(dead.alert, replay=dead.alert.replay + 1, replayed_at=now)
    headers = {h.MSG_ID: replay_msg_id(again)}
    headers.update({k: v for k, v in stored_headers.items() if k in h.TRACE_HEADERS})
    ack = await js.publish(
        alert_subject(again.account, again.symbol), alert_encoder.encode(again), headers=headers
    )
    if ack.duplicate:
        await _check_is_ours(js, ack.seq, again, dlq_seq)
    event = Replayed(
        alert_id=again.id, account=again.account, symbol=again.symbol, at=now,
        replay=again.replay, dlq_seq=dlq_seq, stream_seq=ack.seq,
    )  # fmt: skip
    await js.publish(
        event_subject("replayed", again.account, again.symbol),
        event_encoder.encode(event),
        headers={h.MSG_ID: event_msg_id(event)},
    )
    await js.delete_msg(DLQ_STREAM, dlq_seq)
    return event


async def _check_is_ours(js: JetStreamContext, seq: int, again: Alert, dlq_seq: int) -> None:
    """A duplicate PubAck: the replay is stored only if ALERTS `seq` is this alert in this
    round (the same command run before); else the entry must stay."""
    try:
        raw = await js.get_msg(ALERTS_STREAM, seq=seq, direct=True)
        stored = alert_decoder.decode(raw.data or b"")
    except (NotFoundError, msgspec.DecodeError):
        stored = None
    if stored is None or (stored.account, stored.id, stored.replay) != (
        again.account,
        again.id,
        again.replay,
    ):
        raise DlqError(
            f"DLQ entry {dlq_seq} not replayed: its message id is taken by ALERTS message "
            f"{seq}, which is not this alert's replay {again.replay}; the entry is kept"
        )
