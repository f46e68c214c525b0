"""ops.platform.acks against a real nats-server: each publish gets its own PubAck, and
each way it can fail (refused, no stream, unreadable answer, no answer) is its own error."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError

from contracts.headers import MSG_ID
from contracts.subjects import EVENTS_STREAM, event_subject
from ops.platform.acks import Acks

SUBJECT = event_subject("executed", "acct", "BTCUSDT")


async def test_each_publish_gets_its_own_pub_ack_with_its_own_duplicate(nc: Client) -> None:
    acks = Acks(nc, timeout=5.0, sweep_every=0.05)
    first, again, other = await asyncio.gather(
        acks.publish(SUBJECT, b"{}", {MSG_ID: "e-1"}),
        acks.publish(SUBJECT, b"{}", {MSG_ID: "e-2"}),
        acks.publish(SUBJECT, b"{}", {MSG_ID: "e-3"}),
    )
    assert (first.stream, first.duplicate) == (EVENTS_STREAM, False)
    assert sorted([first.seq, again.seq, other.seq]) == [1, 2, 3]
    repeat = await acks.publish(SUBJECT, b"{}", {MSG_ID: "e-1"})
    assert (repeat.seq, repeat.duplicate) == (first.seq, True)
    info = await nc.jetstream().stream_info(EVENTS_STREAM)
    assert info.state.messages == 3


async def test_a_refused_publish_raises_the_servers_error(nc: Client) -> None:
    acks = Acks(nc, timeout=5.0, sweep_every=0.05)
    with pytest.raises(APIError) as refused:
        await acks.publish(SUBJECT, b"{}", {MSG_ID: "e-x", "Nats-Expected-Last-Sequence": "99"})
    assert "wrong last sequence" in (refused.value.description or "")


async def test_a_subject_no_stream_takes_raises_no_stream(nc: Client) -> None:
    acks = Acks(nc, timeout=5.0, sweep_every=0.05)
    with pytest.raises(NoStreamResponseError):
        await acks.publish("nowhere.at.all", b"{}", {MSG_ID: "n-1"})


async def test_an_answer_that_is_not_a_pub_ack_is_an_api_error(nc: Client) -> None:
    async def garble(msg: Msg) -> None:
        await nc.publish(msg.reply, b"not json")

    await nc.subscribe("garbled.subject", cb=garble)
    acks = Acks(nc, timeout=5.0, sweep_every=0.05)
    with pytest.raises(APIError) as unreadable:
        await acks.publish("garbled.subject", b"{}", {MSG_ID: "g-1"})
    assert "unreadable PubAck" in (unreadable.value.description or "")


async def test_no_answer_within_the_timeout_is_a_timeout_and_later_ones_still_work(
    nc: Client,
) -> None:
    heard = asyncio.Event()

    async def swallow(_: Msg) -> None:
        heard.set()  # a responder that never answers: no "no responders" either

    await nc.subscribe("silent.subject", cb=swallow)
    acks = Acks(nc, timeout=0.3, sweep_every=0.05)
    with pytest.raises(TimeoutError):
        await acks.publish("silent.subject", b"{}", {MSG_ID: "s-1"})
    assert heard.is_set()
    stored = await acks.publish(SUBJECT, b"{}", {MSG_ID: "after-timeout"})
    assert stored.duplicate is False
