"""The projector's NATS role, on a real nats-server running deploy/nats-server.conf.

It does its whole job as its own user in its own account (read ALERTS by sequence, pull
from its consumer on EVENTS and DLQ, ack, read the streams' info and read them by
sequence for a rebuild) without one refusal; then every door it must not have is tried:
publishing alerts, events or dead letters, pulling from the worker's or the notifier's
consumers or from any consumer on ALERTS, creating, deleting or purging anything,
listening in. Each attempt must fail and leave
the streams and consumers as they were.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM, event_subject
from contracts.topology import DLQ_ROUTER, NOTIFIER, PROJECTOR, partition_durable
from ops.platform.settings import DEFAULT_JS_API, ROLE_JS_API
from projector.rebuild import read_range
from tests.secured import DENIED, DENIED_WITHIN, Secured, Untouched, fetch_one, publish_alert
from tests.support import eventually
from tests.workers import make_alert

STREAMS = (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM)


async def _fill(secured: Secured, as_ops: JetStreamContext, as_worker: Client) -> None:
    await publish_alert(as_ops, make_alert("there-to-be-read"))
    await secured.js("worker", as_worker).publish(event_subject("expired", "a", "X"), b"{}")
    await as_ops.publish("dlq.alerts.a.X", b"dead")


async def test_the_projector_does_its_whole_job(
    secured: Secured, as_projector: Client, as_worker: Client, as_ops: JetStreamContext
) -> None:
    before = len(secured.violations("projector"))
    await _fill(secured, as_ops, as_worker)
    js = secured.js("projector", as_projector)
    (alert,) = await read_range(as_projector, ROLE_JS_API, ALERTS_STREAM, 1, 1)  # by sequence
    assert alert.seq == 1 and (await js.stream_info(ALERTS_STREAM)).state.last_seq == 1
    for stream in (EVENTS_STREAM, DLQ_STREAM):
        sub = await js.pull_subscribe_bind(durable=PROJECTOR, stream=stream)
        (msg,) = await sub.fetch(1, timeout=3)
        assert msg.metadata.sequence.stream == 1
        await msg.ack_sync()
        await sub.unsubscribe()
        assert (await js.stream_info(stream)).state.last_seq == 1
        (stored,) = await read_range(as_projector, ROLE_JS_API, stream, 1, 1)
        assert stored.data == msg.data

        async def acked(stream: str = stream) -> bool | None:
            info = await as_ops.consumer_info(stream, PROJECTOR)
            return True if info.num_ack_pending == 0 and info.num_pending == 0 else None

        await eventually(acked, within=5)
    assert secured.violations("projector")[before:] == []


def _attempts() -> dict[str, Callable[[JetStreamContext], Awaitable[object]]]:
    """What the projector must not do."""
    return {
        "publish an alert": lambda js: js.publish("alerts.in.a.X", b"{}"),
        "forge an event": lambda js: js.publish(event_subject("executed", "a", "X"), b"{}"),
        "forge a dead letter": lambda js: js.publish("dlq.alerts.a.X", b"{}"),
        "pull a partition": lambda js: fetch_one(js, ALERTS_STREAM, partition_durable(0)),
        "pull ALERTS/projector": lambda js: fetch_one(js, ALERTS_STREAM, PROJECTOR),
        "pull the notifier's events": lambda js: fetch_one(js, EVENTS_STREAM, NOTIFIER),
        "pull the router's advisories": lambda js: fetch_one(js, "ADVISORIES", DLQ_ROUTER),
        "read an advisory": lambda js: js.get_msg("ADVISORIES", seq=1, direct=True),
        "create a consumer on EVENTS": lambda js: js.add_consumer(
            EVENTS_STREAM, ConsumerConfig(durable_name="spy", deliver_subject="events.x.a.b")
        ),
        "delete its own consumer": lambda js: js.delete_consumer(EVENTS_STREAM, PROJECTOR),
        "look at a consumer": lambda js: js.consumer_info(ALERTS_STREAM, partition_durable(0)),
        "purge the DLQ": lambda js: js.purge_stream(DLQ_STREAM),
        "delete EVENTS": lambda js: js.delete_stream(EVENTS_STREAM),
        "delete an alert": lambda js: js.delete_msg(ALERTS_STREAM, 1),
        "delete a dead letter": lambda js: js.delete_msg(DLQ_STREAM, 1),
    }


@pytest.mark.parametrize("prefix", [ROLE_JS_API, DEFAULT_JS_API])
@pytest.mark.parametrize("attempt", list(_attempts()))
async def test_the_projector_cannot(
    secured: Secured,
    as_projector: Client,
    as_worker: Client,
    as_ops: JetStreamContext,
    attempt: str,
    prefix: str,
) -> None:
    await _fill(secured, as_ops, as_worker)
    # Left on ALERTS by an older version (the projector reads ALERTS by sequence now).
    await as_ops.add_consumer(
        ALERTS_STREAM, ConsumerConfig(durable_name=PROJECTOR, ack_policy=AckPolicy.EXPLICIT)
    )
    untouched = await Untouched.of(as_ops, STREAMS, consumers_of=STREAMS)
    with pytest.raises(DENIED):
        await asyncio.wait_for(
            _attempts()[attempt](as_projector.jetstream(prefix=prefix, timeout=0.5)), 1
        )
    await untouched.check(as_ops)
    notifier = await as_ops.consumer_info(EVENTS_STREAM, NOTIFIER)
    assert notifier.delivered.stream_seq == 0
    leftover = await as_ops.consumer_info(ALERTS_STREAM, PROJECTOR)
    assert leftover.delivered.stream_seq == 0


@pytest.mark.parametrize("subject", ["events.>", "alerts.in.>", "_INBOX.>"])
async def test_the_projector_cannot_listen_in(
    secured: Secured, as_projector: Client, as_worker: Client, subject: str
) -> None:
    """Neither events nor alerts as they pass, nor another role's replies."""
    sub = await as_projector.subscribe(subject)
    await as_projector.flush()
    await secured.js("worker", as_worker).publish(event_subject("expired", "a", "X"), b"{}")
    await secured.refused("projector", "Subscription", subject)
    with pytest.raises(TimeoutError):
        await sub.next_msg(timeout=DENIED_WITHIN)
