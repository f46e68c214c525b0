"""The workers' replay service (worker.replays), asked as the console on a real
nats-server running deploy/nats-server.conf: it replays a DLQ entry named by its
sequence and nothing else. A request that is not exactly one positive sequence is
refused and stores nothing; a sequence with no entry is said to be one; with no worker
running the console says so at once instead of waiting."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from contracts.messages import Replayed
from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM, REPLAY_SERVICE
from ops.platform import deadletters
from tests.secured import Untouched, publish_alert, replay_service
from tests.workers import make_alert

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from tests.secured import Secured


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        b'{"dlq_seq": 0}',
        b'{"dlq_seq": -1}',
        b'{"dlq_seq": "1"}',
        b'{"dlq_seq": 1.5}',
        b'{"dlq_seq": 1, "alert": {"id": "forged", "account": "default"}}',
        b'[{"dlq_seq": 1}]',
        b'{"dlq_seq": 1, "x\\n2026-12-07 INFO worker.replays replayed DLQ entry 7": 1}',
    ],
)
async def test_anything_but_one_dlq_sequence_is_refused_and_stores_nothing(
    secured: Secured, as_console: Client, as_worker: Client, as_ops: JetStreamContext,
    body: bytes,
) -> None:  # fmt: skip
    await publish_alert(as_ops, make_alert("there"))
    await as_ops.publish("dlq.alerts.default.X", b"dead")
    untouched = await Untouched.of(as_ops, (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM), ())
    async with replay_service(secured, as_worker):
        reply = await as_console.request(REPLAY_SERVICE, body, timeout=5)
    answer = msgspec.json.decode(reply.data, type=deadletters.ReplayAnswer)
    assert (answer.outcome, answer.event) == ("bad_request", None), answer
    assert answer.detail == deadletters.NOT_A_REQUEST  # what was sent is never echoed
    await untouched.check(as_ops)


async def test_a_sequence_with_no_entry_is_said_to_have_none(
    secured: Secured, as_console: Client, as_worker: Client, as_ops: JetStreamContext
) -> None:
    untouched = await Untouched.of(as_ops, (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM), ())
    async with replay_service(secured, as_worker):
        with pytest.raises(deadletters.NoEntryError, match="no DLQ entry 999"):
            await deadletters.request_replay(as_console, 999, 5)
    await untouched.check(as_ops)


async def test_an_entry_without_an_alert_stays_and_says_why(
    secured: Secured, as_console: Client, as_worker: Client, as_ops: JetStreamContext
) -> None:
    dlq_seq = (await as_ops.publish("dlq.alerts.default.X", b"not an alert")).seq
    async with replay_service(secured, as_worker):
        with pytest.raises(deadletters.DlqError, match="no decodable alert"):
            await deadletters.request_replay(as_console, dlq_seq, 5)
    assert (await as_ops.stream_info(DLQ_STREAM)).state.messages == 1


async def test_with_no_worker_running_the_console_is_told_at_once(as_console: Client) -> None:
    async with asyncio.timeout(2):  # no responders: not the whole wait
        with pytest.raises(deadletters.NoReplayerError, match="no worker is running"):
            await deadletters.request_replay(as_console, 1, 10)


async def test_a_big_request_costs_the_console_its_connection_not_the_worker(
    secured: Secured, as_worker: Client
) -> None:
    """Its account's payload limit: a flood of big requests could otherwise fill the
    worker connection's buffer at the server, which then cuts the worker off."""
    console = await secured.connect("console")
    try:
        async with replay_service(secured, as_worker):
            with pytest.raises(NatsTimeoutError):  # never answered: never delivered
                await console.request(REPLAY_SERVICE, b"x" * 100_000, timeout=2)
            assert "maximum payload violation" in repr(console.last_error)
            assert as_worker.is_connected
            small = await as_worker.request(REPLAY_SERVICE, b'{"dlq_seq": 999}', timeout=2)
            assert b"no_entry" in small.data  # still serving
    finally:
        await console.close()


async def test_two_workers_replaying_one_entry_at_once_store_it_once(
    secured: Secured, as_console: Client, as_worker: Client, as_ops: JetStreamContext
) -> None:
    """Each request is one worker's (a queue group), but a console that asks twice at
    once can have two workers on one entry: both answers are true (replayed, or no
    entry any more), never a failure, and the alert, its event and the removal happen
    once."""
    alert = make_alert("twice")
    await publish_alert(as_ops, alert)
    dlq_seq = (await as_ops.publish("dlq.alerts.default.X", msgspec.json.encode(alert))).seq
    other = await secured.connect("worker")
    try:
        async with replay_service(secured, as_worker), replay_service(secured, other):
            answers = await asyncio.gather(
                *(deadletters.request_replay(as_console, dlq_seq, 5) for _ in range(8)),
                return_exceptions=True,
            )
    finally:
        await other.close()
    assert all(isinstance(a, Replayed | deadletters.NoEntryError) for a in answers), answers
    assert any(isinstance(a, Replayed) for a in answers)
    assert (await as_ops.stream_info(ALERTS_STREAM)).state.messages == 2  # once replayed
    assert (await as_ops.stream_info(EVENTS_STREAM)).state.messages == 1
    assert (await as_ops.stream_info(DLQ_STREAM)).state.messages == 0


@pytest.mark.parametrize(
    "reply",
    ["alerts.in.default.FORGED", "events.executed.default.X", "dlq.alerts.default.X",
     "$JS.alertbridge.API.STREAM.PURGE.ALERTS", "$JS.API.STREAM.PURGE.ALERTS"],
)  # fmt: skip
async def test_a_forged_reply_subject_writes_the_answer_nowhere_the_console_may_not(
    secured: Secured, as_console: Client, as_worker: Client, as_ops: JetStreamContext,
    reply: str,
) -> None:  # fmt: skip
    """The worker answers to the reply subject the console chose: mapped back into the
    console's account, where it reaches no stream and no API the console lacks."""
    await publish_alert(as_ops, make_alert("there"))
    names = (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM)
    untouched = await Untouched.of(as_ops, names, ())
    async with replay_service(secured, as_worker):
        for body in (b'{"dlq_seq": 999}', b"garbage"):
            await as_console.publish(REPLAY_SERVICE, body, reply=reply)
        with pytest.raises(deadletters.NoEntryError):  # answered after them, in order
            await deadletters.request_replay(as_console, 999, 5)
    await untouched.check(as_ops)
