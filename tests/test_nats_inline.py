"""ops.platform.nats_compat.subscribe_inline against a real nats-server: each message
reaches the sink in order, as nats-py reads it; nothing counts towards the
slow-consumer limit; a sink that raises stops neither the subscription nor the
connection; draining and a nats-server killed and restarted lose nothing after."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import nats
import pytest

from ops.platform.nats_compat import subscribe_inline
from tests.support import NatsServer, eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from nats.aio.client import Client
    from nats.aio.msg import Msg


@pytest.fixture
async def plain(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def test_every_message_reaches_the_sink_in_order_and_none_stays_pending(
    plain: Client,
) -> None:
    seen: list[bytes] = []
    sub = await subscribe_inline(plain, "inline.order", lambda msg: seen.append(msg.data))
    payload = b"x" * 1024
    for i in range(2000):
        await plain.publish("inline.order", b"%d:" % i + payload)
    await plain.flush()
    await eventually(lambda: _done(len(seen) == 2000))
    assert [m.split(b":", 1)[0] for m in seen] == [b"%d" % i for i in range(2000)]
    # nats-py adds each message's size to the pending bytes before handing it on: left
    # there, 64 MiB of traffic would make every later message a "slow consumer" drop.
    assert (sub.pending_bytes, sub.pending_msgs) == (0, 0)


async def test_a_sink_that_raises_loses_only_its_own_message(
    plain: Client, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[bytes] = []

    def fussy(msg: Msg) -> None:
        if msg.data == b"bad":
            raise ValueError("not this one")
        seen.append(msg.data)

    other: list[bytes] = []
    await subscribe_inline(plain, "inline.fussy", fussy)
    await subscribe_inline(plain, "inline.other", lambda msg: other.append(msg.data))
    with caplog.at_level(logging.ERROR, logger="ops.platform.nats_compat"):
        for data in (b"one", b"bad", b"two"):
            await plain.publish("inline.fussy", data)
        await plain.publish("inline.other", b"still read")
        await plain.flush()
        await eventually(lambda: _done(len(seen) == 2 and len(other) == 1))
    assert seen == [b"one", b"two"]
    assert other == [b"still read"]
    assert plain.is_connected
    assert "handling a message on inline.fussy" in caplog.text


async def test_drain_returns_once_the_server_stops_sending(plain: Client) -> None:
    seen: list[bytes] = []
    sub = await subscribe_inline(plain, "inline.drain", lambda msg: seen.append(msg.data))
    for i in range(100):
        await plain.publish("inline.drain", b"%d" % i)
    # Flushed first: nats-py sends the UNSUB of a drain ahead of publishes still buffered.
    await plain.flush()
    async with asyncio.timeout(5):
        await sub.drain()  # type: ignore[no-untyped-call]  # untyped in nats-py 2.16
    assert len(seen) == 100
    await plain.publish("inline.drain", b"after")
    await plain.flush()
    await asyncio.sleep(0.2)
    assert len(seen) == 100


async def test_the_subscription_comes_back_after_nats_server_is_killed(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    client = await nats.connect(server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    try:
        seen: list[bytes] = []
        await subscribe_inline(client, "inline.crash", lambda msg: seen.append(msg.data))
        await client.publish("inline.crash", b"before")
        await eventually(lambda: _done(seen == [b"before"]))
        server.kill()
        server.start()
        async with asyncio.timeout(15):
            while b"after" not in seen:  # the SUB is sent again on reconnect, then it flows
                await asyncio.sleep(0.2)
                with contextlib.suppress(Exception):  # reconnecting: the next round tries
                    await client.publish("inline.crash", b"after")
                    await client.flush(timeout=1)
        assert client.stats["reconnects"] == 1
    finally:
        await client.close()
        server.stop()


async def _done(condition: bool) -> bool | None:
    return True if condition else None
