"""The operators' DLQ functions (ops.tools.dlq) in-process, against a real nats-server:
`entry` (dlq show), `purge`, and what a replay carries (its clock, its trace, its event's
subject). The CLI around them: tests/test_dlq_replay.py; the whole flow with workers too."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.headers import MSG_ID
from contracts.messages import Replayed, alert_decoder, replay_msg_id
from contracts.subjects import ALERTS_STREAM, EVENTS_STREAM, alert_subject, event_subject
from ops.tools import dlq
from tests.workers import make_alert
from worker.dlq import DeadLetters

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def _dead(
    js: JetStreamContext, data: bytes, subject: str, headers: dict[str, str] | None = None
) -> int:
    """An ALERTS message and its DLQ entry, as the worker writes them; the DLQ sequence."""
    ack = await js.publish(subject, data, headers=headers)
    dlq_seq, _ = await DeadLetters(js).write(
        data=data,
        original_headers=headers,
        subject=subject,
        seq=ack.seq,
        reason="terminated: no such symbol",
        deliveries=2,
        last_error="TerminalError: no such symbol",
    )
    return dlq_seq


async def test_an_entry_is_read_by_its_sequence(nc: Client) -> None:
    js = nc.jetstream()
    alert = make_alert("shown")
    subject = alert_subject(alert.account, alert.symbol)
    seq = await _dead(js, msgspec.json.encode(alert), subject)
    shown = await dlq.entry(js, seq)
    assert shown == (await dlq.entries(js))[0]
    assert (shown.dlq_seq, shown.alert_id, shown.reason, shown.deliveries) == (
        seq, "shown", "terminated: no such symbol", 2,
    )  # fmt: skip
    assert shown.last_error == "TerminalError: no such symbol"
    assert shown.subject == subject and shown.alert == alert
    with pytest.raises(dlq.DlqError, match=f"^no DLQ entry {seq + 1}$"):
        await dlq.entry(js, seq + 1)


async def test_purge_drops_one_entry_for_good(nc: Client) -> None:
    js = nc.jetstream()
    kept, dropped = make_alert("kept"), make_alert("dropped")
    for alert in (kept, dropped):
        await _dead(js, msgspec.json.encode(alert), alert_subject(alert.account, alert.symbol))
    entries = await dlq.entries(js)
    await dlq.purge(js, entries[1].dlq_seq)
    assert [e.alert_id for e in await dlq.entries(js)] == ["kept"]
    assert (await js.stream_info(ALERTS_STREAM)).state.messages == 2  # the originals stay
    for gone in (entries[1].dlq_seq, 999):  # purged already, or never there: one answer
        with pytest.raises(dlq.NoEntryError, match=f"no DLQ entry {gone}"):
            await dlq.purge(js, gone)


async def test_a_replay_restarts_the_clock_keeps_the_trace_and_is_a_replayed_event(
    nc: Client,
) -> None:
    js = nc.jetstream()
    alert = make_alert("again", timenow=datetime(2025, 1, 15, tzinfo=UTC))
    subject = alert_subject(alert.account, alert.symbol)
    seq = await _dead(js, msgspec.json.encode(alert), subject, {"traceparent": TRACEPARENT})
    before = datetime.now(UTC)
    event = await dlq.replay(js, seq)
    after = datetime.now(UTC)
    stored = await js.get_msg(ALERTS_STREAM, seq=event.stream_seq, direct=True)
    again = alert_decoder.decode(stored.data or b"")
    assert again.replay == 1 and again.replayed_at is not None
    assert before <= again.replayed_at <= after  # its age counts from now (README)
    assert stored.headers is not None and stored.headers["traceparent"] == TRACEPARENT
    where = event_subject("replayed", alert.account, alert.symbol)
    assert where.startswith("events.replayed.")  # the layout the README promises
    recorded = await js.get_last_msg(EVENTS_STREAM, where)
    decoded = msgspec.json.decode(recorded.data or b"", type=Replayed)
    assert (decoded.alert_id, decoded.dlq_seq, decoded.stream_seq) == (
        "again",
        seq,
        event.stream_seq,
    )


async def test_an_entry_without_an_alert_cannot_be_replayed(nc: Client) -> None:
    js = nc.jetstream()
    seq = await _dead(js, b"not an alert", alert_subject("default", "X"))
    with pytest.raises(
        dlq.DlqError, match=f"^DLQ entry {seq} holds no decodable alert; it cannot be replayed$"
    ):
        await dlq.replay(js, seq)
    assert [e.dlq_seq for e in await dlq.entries(js)] == [seq]  # kept


async def test_a_message_id_taken_by_another_alert_keeps_the_entry(nc: Client) -> None:
    """The replay's id is already in ALERTS for another alert (or round): not replayed."""
    js = nc.jetstream()
    alert = make_alert("taken")
    subject = alert_subject(alert.account, alert.symbol)
    seq = await _dead(js, msgspec.json.encode(alert), subject)
    round_one = msgspec.structs.replace(alert, replay=1)
    other = make_alert("someone-else")
    taken = await js.publish(
        subject,
        msgspec.json.encode(other),
        headers={MSG_ID: replay_msg_id(round_one)},
    )
    with pytest.raises(
        dlq.DlqError,
        match=(
            f"^DLQ entry {seq} not replayed: its message id is taken by ALERTS message "
            f"{taken.seq}, which is not this alert's replay 1; the entry is kept$"
        ),
    ):
        await dlq.replay(js, seq)
    assert [e.dlq_seq for e in await dlq.entries(js)] == [seq]


async def test_a_replay_run_again_after_a_crash_stores_it_once(nc: Client) -> None:
    """The first run stored the replay and its event, then died before removing the entry:
    the command run again finds its own replay (a duplicate PubAck for this alert and
    round), records nothing twice, and removes the entry."""
    js = nc.jetstream()
    alert = make_alert("crashed")
    data, subject = msgspec.json.encode(alert), alert_subject(alert.account, alert.symbol)
    first = await dlq.replay(js, await _dead(js, data, subject))
    again = await _dead(js, data, subject)  # the entry, as the crash left it
    second = await dlq.replay(js, again)
    assert second.stream_seq == first.stream_seq and second.replay == first.replay == 1
    assert await dlq.entries(js) == []
    alerts = await js.stream_info(ALERTS_STREAM)
    assert alerts.state.messages == 3  # two originals (one per _dead) and one replay
    events = await js.stream_info(EVENTS_STREAM, subjects_filter="events.replayed.>")
    assert events.state.subjects == {event_subject("replayed", "default", alert.symbol): 1}
