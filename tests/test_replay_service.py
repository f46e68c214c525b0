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
    assert "not a replay request" in answer.detail
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
