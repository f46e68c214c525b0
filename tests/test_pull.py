"""The worker's pull loop against a real nats-server: one pull request for a steady
flow, arrival order, stopping without keeping a request open, a request that ends
(409) or is lost with the server, a run whose connection is closed under it, and a
consumer with a pinned priority group: one puller served at a time, handed over by an
unpin, and a puller that lost its pin served again once the pin lapses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from ops.platform.provision import PinnedConsumerConfig
from tests.support import NatsServer, eventually
from worker.pull import Puller, unpin

STREAM, DURABLE = "PULLTEST", "one-at-a-time"
PINNED, GROUP = "pinned", "workers"


async def _provision(js: nats.js.JetStreamContext) -> None:
    await js.add_stream(
        StreamConfig(name=STREAM, subjects=["pulltest.>"], storage=StorageType.FILE)
    )
    await js.add_consumer(STREAM, _consumer())


async def _pinned(js: nats.js.JetStreamContext, pin_timeout: float) -> None:
    """Like a partition consumer: one at a time, one puller pinned."""
    await js.add_consumer(
        STREAM,
        PinnedConsumerConfig(
            durable_name=PINNED, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1, ack_wait=30,
            priority_groups=[GROUP], priority_policy="pinned_client", priority_timeout=pin_timeout,
        ),
    )  # fmt: skip


def _consumer() -> ConsumerConfig:
    """Like a partition consumer: one message in flight, 30 s before a redelivery."""
    return ConsumerConfig(
        durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1, ack_wait=30
    )


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    js = client.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(STREAM)
    await _provision(js)
    yield client
    await client.close()


class Pulling:
    """`Puller.run` in a task, recording what it handled (and acking it)."""

    def __init__(
        self, nc: Client, *, batch: int, fetch_timeout: float, group: str | None = None
    ) -> None:
        self.handled: list[bytes] = []
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(
            Puller(
                nc.jetstream(), stream=STREAM, durable=PINNED if group else DURABLE,
                batch=batch, handle=self.handle, stopping=self.stopping,
                fetch_timeout=fetch_timeout, group=group,
            ).run()
        )  # fmt: skip

    async def handle(self, msg: Msg) -> None:
        self.handled.append(msg.data)
        await msg.ack()

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, 10)

    def count(self, n: int) -> Callable[[], Awaitable[bool | None]]:
        async def probe() -> bool | None:
            return True if len(self.handled) >= n else None

        return probe


async def _requests(nc: Client, durable: str = DURABLE) -> list[Msg]:
    """Every pull request sent to the consumer, as a bystander on the subject sees it."""
    seen: list[Msg] = []

    async def record(msg: Msg) -> None:
        seen.append(msg)

    await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{durable}", cb=record)
    await nc.flush()
    return seen


async def test_a_steady_flow_takes_one_request_and_keeps_the_order(nc: Client) -> None:
    """max_ack_pending 1 hands the messages out one at a time, each after the last
    ack, all on one open request (nats-py's fetch(1) would send 50)."""
    js = nc.jetstream()
    requests = await _requests(nc)
    for i in range(50):
        await js.publish(f"pulltest.{i % 3}", f"m{i}".encode())
    pulling = Pulling(nc, batch=100, fetch_timeout=5.0)
    await eventually(pulling.count(50))
    await pulling.stop()
    assert pulling.handled == [f"m{i}".encode() for i in range(50)]
    assert len(requests) == 1
    info = await js.consumer_info(STREAM, DURABLE)
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_request_that_has_brought_its_batch_is_followed_by_the_next(
    nc: Client,
) -> None:
    js = nc.jetstream()
    requests = await _requests(nc)
    for i in range(25):
        await js.publish("pulltest.a", f"m{i}".encode())
    pulling = Pulling(nc, batch=10, fetch_timeout=5.0)
    await eventually(pulling.count(25))
    await pulling.stop()
    assert pulling.handled == [f"m{i}".encode() for i in range(25)]
    assert len(requests) == 3  # 10 + 10 + 5 (the third still open when stopped)


async def test_an_idle_request_expires_and_is_renewed(nc: Client) -> None:
    requests = await _requests(nc)
    pulling = Pulling(nc, batch=100, fetch_timeout=0.3)
    await eventually(lambda: _at_least(requests, 3), within=5)
    await nc.jetstream().publish("pulltest.a", b"late")
    await eventually(pulling.count(1))
    await pulling.stop()
    assert pulling.handled == [b"late"]


async def _at_least(items: list[Msg], n: int) -> bool | None:
    return True if len(items) >= n else None


async def test_once_stopped_no_request_is_left_open(nc: Client) -> None:
    """A message published after the loop stopped goes at once to the next puller,
    not to a request nobody listens to (which would hold it for ack_wait, 30 s)."""
    js = nc.jetstream()
    pulling = Pulling(nc, batch=100, fetch_timeout=20.0)
    await js.publish("pulltest.a", b"before")
    await eventually(pulling.count(1))
    await pulling.stop()
    await js.publish("pulltest.a", b"after")
    sub = await js.pull_subscribe_bind(DURABLE, STREAM)
    msgs = await sub.fetch(1, timeout=3)
    assert [m.data for m in msgs] == [b"after"]
    assert pulling.handled == [b"before"]


async def test_a_request_the_server_ends_is_renewed(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting the consumer ends the open request (409); once it is back, so is the flow."""
    caplog.set_level(logging.INFO, logger="worker.pull")
    js = nc.jetstream()
    pulling = Pulling(nc, batch=100, fetch_timeout=0.5)
    await js.publish("pulltest.a", b"first")
    await eventually(pulling.count(1))
    await js.delete_consumer(STREAM, DURABLE)

    async def ended() -> bool | None:  # the puller was told: not just any pause
        said = [r.getMessage() for r in caplog.records if r.name == "worker.pull"]
        return True if any(f"to {STREAM}/{DURABLE} ended: 409" in line for line in said) else None

    await eventually(ended)
    await js.add_consumer(STREAM, _consumer())  # starts over: "first" comes again
    await js.publish("pulltest.a", b"second")
    await eventually(pulling.count(3), within=10)
    await pulling.stop()
    assert pulling.handled == [b"first", b"first", b"second"]


async def test_a_run_on_a_connection_closed_under_it_fails(nc: Client) -> None:
    """A closed connection never comes back (nats-py closes it for good on an -ERR from
    the server): the run ends with the error, for its supervisor, instead of idling."""
    pulling = Pulling(nc, batch=100, fetch_timeout=0.5)
    await nc.jetstream().publish("pulltest.a", b"first")
    await eventually(pulling.count(1))
    await nc.close()
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(pulling.task, 5)
    assert pulling.handled == [b"first"]


async def test_a_request_lost_with_the_server_is_replaced(tmp_path: Path) -> None:
    """The server restarts (same store): the open request is gone, the loop asks again."""
    server = NatsServer(tmp_path / "store").start()
    client = await nats.connect(server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    try:
        js = client.jetstream()
        await _provision(js)
        pulling = Pulling(client, batch=100, fetch_timeout=5.0)
        await js.publish("pulltest.a", b"first")
        await eventually(pulling.count(1))
        await eventually(lambda: _acked(js))  # else "first" would come again, after 30 s
        server.stop()  # a restart: the open request is gone with it
        server.start()
        await eventually(lambda: _published(js, b"after the restart"), within=20)
        await eventually(pulling.count(2), within=10)  # the old request is gone for good
        await pulling.stop()
        assert pulling.handled == [b"first", b"after the restart"]
    finally:
        await client.close()
        server.stop()


async def _acked(js: nats.js.JetStreamContext) -> bool | None:
    info = await js.consumer_info(STREAM, DURABLE)
    return True if info.num_ack_pending == 0 and info.num_pending == 0 else None


async def _published(js: nats.js.JetStreamContext, data: bytes) -> bool | None:
    """Published once the server is back (the id keeps a retried publish single)."""
    try:
        await js.publish("pulltest.a", data, timeout=1, headers={"Nats-Msg-Id": data.decode()})
    except Exception:  # noqa: BLE001 - not back yet
        return None
    return True


async def _publish(js: nats.js.JetStreamContext, *names: str) -> None:
    for name in names:
        await js.publish("pulltest.a", name.encode())


async def test_a_pinned_consumer_serves_one_puller_and_an_unpin_hands_it_over(
    nc: Client,
) -> None:
    """The second puller waits while the first is pinned (30 s pin timeout: it never
    lapses here); once the first stops and unpins, the second is served at once."""
    js = nc.jetstream()
    await _pinned(js, pin_timeout=30)
    first = Pulling(nc, batch=100, fetch_timeout=0.5, group=GROUP)
    await _publish(js, "a0", "a1")
    await eventually(first.count(2))
    requests = await _requests(nc, PINNED)
    second = Pulling(nc, batch=100, fetch_timeout=0.5, group=GROUP)
    await _publish(js, *(f"b{i}" for i in range(10)))
    await eventually(first.count(12))

    async def unserved() -> bool | None:  # the second has asked three times, in vain
        without_pin = [r for r in requests if "id" not in json.loads(r.data)]
        return True if len(without_pin) >= 3 else None

    await eventually(unserved, within=5)
    assert second.handled == []
    await first.stop()
    await unpin(js, stream=STREAM, durable=PINNED, group=GROUP)
    await _publish(js, "c0", "c1")
    await eventually(second.count(2), within=5)
    await second.stop()
    assert first.handled == [n.encode() for n in ("a0", "a1", *(f"b{i}" for i in range(10)))]
    assert second.handled == [b"c0", b"c1"]


async def test_a_puller_that_lost_its_pin_is_served_again_when_the_pin_lapses(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Unpinned while it runs, the first puller's next request (with its old pin id) is
    refused (423); it asks again without the id, and once the second stops (without an
    unpin: a dead worker) the pin lapses and the first is served again."""
    caplog.set_level(logging.INFO, logger="worker.pull")
    js = nc.jetstream()
    await _pinned(js, pin_timeout=1.0)
    first = Pulling(nc, batch=1, fetch_timeout=0.3, group=GROUP)
    await _publish(js, "a0")
    await eventually(first.count(1))
    second = Pulling(nc, batch=100, fetch_timeout=0.3, group=GROUP)
    await unpin(js, stream=STREAM, durable=PINNED, group=GROUP)
    await _publish(js, "b0")
    await eventually(second.count(1), within=5)

    async def refused() -> bool | None:
        said = [r.getMessage() for r in caplog.records if r.name == "worker.pull"]
        return True if f"pull request to {STREAM}/{PINNED}: no longer pinned" in said else None

    await eventually(refused, within=5)
    await second.stop()  # no unpin: the pin lapses after a second without its requests
    await _publish(js, "c0")
    await eventually(first.count(2), within=10)
    await first.stop()
    assert first.handled == [b"a0", b"c0"]
    assert second.handled == [b"b0"]
