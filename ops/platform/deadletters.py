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
on `alerts.in.>` and `events.replayed.>`, and deleting a DLQ message. The ops role has
them all and replays directly (the CLI). The console, which faces the web, has none of
the writes: it asks the workers' replay service (`request_replay`, answered by
`answer_replay` in worker.replays) to replay one entry by its DLQ sequence, so a stolen
console password can replay what is dead-lettered but never store an alert of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NotFoundError

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
from contracts.subjects import (
    ALERTS_STREAM,
    DLQ_STREAM,
    REPLAY_SERVICE,
    alert_subject,
    event_subject,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
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


class NoReplayerError(DlqError):
    """No worker answered the replay service (none running, or none in time)."""


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    """What the replay service takes: one DLQ sequence, nothing else."""

    dlq_seq: Annotated[int, msgspec.Meta(ge=1)]


NOT_A_REQUEST = 'not a replay request: send {"dlq_seq": <a DLQ sequence>} and nothing else'


class ReplayAnswer(msgspec.Struct, omit_defaults=True):
    """What it answers: the replay, or why there was none."""

    outcome: Literal["replayed", "no_entry", "refused", "bad_request", "failed"]
    detail: str = ""
    event: Replayed | None = None


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
    try:
        await js.delete_msg(DLQ_STREAM, dlq_seq)
    except APIError:  # two replays of one entry at once: the other one removed it
        if await _still_there(js, dlq_seq):
            raise
    return event


async def _still_there(js: JetStreamContext, dlq_seq: int) -> bool:
    try:
        await js.get_msg(DLQ_STREAM, seq=dlq_seq, direct=True)
    except NotFoundError:
        return False
    return True


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


async def request_replay(nc: Client, dlq_seq: int, wait: float) -> Replayed:
    """Ask the workers' replay service to replay one entry. NoEntryError (none with that
    sequence), DlqError (it cannot be replayed: the entry stays), NoReplayerError."""
    body = msgspec.json.encode(ReplayRequest(dlq_seq=dlq_seq))
    try:
        reply = await nc.request(REPLAY_SERVICE, body, timeout=wait)
    except NoRespondersError:
        raise NoReplayerError("no worker is running to replay it: start one") from None
    except NatsTimeoutError:
        raise NoReplayerError(f"no worker answered the replay within {wait:g}s") from None
    answer = msgspec.json.decode(reply.data, type=ReplayAnswer)
    if answer.outcome == "replayed" and answer.event is not None:
        return answer.event
    if answer.outcome == "no_entry":
        raise NoEntryError(answer.detail)
    raise DlqError(answer.detail or answer.outcome)


async def answer_replay(js: JetStreamContext, data: bytes) -> ReplayAnswer:
    """The replay service's answer to one request (`data`): replay the entry it names."""
    try:
        asked = msgspec.json.decode(data, type=ReplayRequest)
    except msgspec.DecodeError:  # its text would echo what was sent: not repeated
        return ReplayAnswer(outcome="bad_request", detail=NOT_A_REQUEST)
    try:
        return ReplayAnswer(outcome="replayed", event=await replay(js, asked.dlq_seq))
    except NoEntryError as exc:
        return ReplayAnswer(outcome="no_entry", detail=str(exc))
    except DlqError as exc:
        return ReplayAnswer(outcome="refused", detail=str(exc))
    except Exception as exc:  # noqa: BLE001 - answered, so the console need not wait it out
        return ReplayAnswer(outcome="failed", detail=f"the replay failed: {exc!r}")
