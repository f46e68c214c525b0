"""The notifier's NATS role, on a real nats-server running deploy/nats-server.conf.

It does its whole job as its own user in its own account (pull from its consumer on
EVENTS, ack, read the DLQ's depth) without one refusal; then every door it must not
have is tried: publishing alerts, events or dead letters, reading an alert, pulling from
another consumer, creating, deleting or purging anything, listening in. Each attempt
must fail and leave the streams as they were.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext

from contracts.messages import Expired, event_encoder
from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM, event_subject
from contracts.topology import DLQ_ROUTER, NOTIFIER, partition_durable
from ops.platform.settings import DEFAULT_JS_API, ROLE_JS_API
from tests.secured import DENIED, DENIED_WITHIN, Secured, Untouched, fetch_one, publish_alert
from tests.support import eventually
from tests.workers import make_alert


def _expired(alert_id: str) -> Expired:
    return Expired(
        alert_id=alert_id, account="a", symbol="NASDAQ:AAPL", at=datetime.now(UTC),
        age=99.0, max_age=60.0, attempts=1, stream_seq=1,
    )  # fmt: skip


async def test_the_notifier_does_its_whole_job(
    secured: Secured, as_notifier: Client, as_worker: Client, as_ops: JetStreamContext
) -> None:
    before = len(secured.violations("notifier"))
    event = _expired("seen")
    await secured.js("worker", as_worker).publish(
        event_subject("expired", "a", "NASDAQ:AAPL"), event_encoder.encode(event)
    )
    await as_ops.publish("dlq.alerts.a.X", b"dead")
    js = secured.js("notifier", as_notifier)
    sub = await js.pull_subscribe_bind(durable=NOTIFIER, stream=EVENTS_STREAM)
    (msg,) = await sub.fetch(1, timeout=3)
    assert event_encoder.encode(event) == msg.data
    await msg.ack_sync()
    assert (await js.stream_info(DLQ_STREAM)).state.messages == 1

    async def acked() -> bool | None:
        info = await as_ops.consumer_info(EVENTS_STREAM, NOTIFIER)
        return True if info.num_ack_pending == 0 and info.num_pending == 0 else None

    await eventually(acked, within=5)
    await sub.unsubscribe()
    assert secured.violations("notifier")[before:] == []


def _attempts() -> dict[str, Callable[[JetStreamContext], Awaitable[object]]]:
    """What the notifier must not do."""
    now = event_encoder.encode(_expired("forged"))
    return {
        "publish an alert": lambda js: js.publish("alerts.in.a.X", b"{}"),
        "forge an event": lambda js: js.publish(event_subject("expired", "a", "X"), now),
        "forge a dead letter": lambda js: js.publish("dlq.alerts.a.X", b"{}"),
        "read an alert (direct get)": lambda js: js.get_msg(ALERTS_STREAM, seq=1, direct=True),
        "read an alert (get)": lambda js: js.get_msg(ALERTS_STREAM, seq=1),
        "read an event (direct get)": lambda js: js.get_msg(EVENTS_STREAM, seq=1, direct=True),
        "read a dead letter": lambda js: js.get_msg(DLQ_STREAM, seq=1, direct=True),
        "look at ALERTS": lambda js: js.stream_info(ALERTS_STREAM),
        "pull a partition": lambda js: fetch_one(js, ALERTS_STREAM, partition_durable(0)),
        "pull the router's advisories": lambda js: fetch_one(js, "ADVISORIES", DLQ_ROUTER),
        "create a consumer on EVENTS": lambda js: js.add_consumer(
            EVENTS_STREAM, ConsumerConfig(durable_name="spy")
        ),
        "delete its own consumer": lambda js: js.delete_consumer(EVENTS_STREAM, NOTIFIER),
        "look at its own consumer": lambda js: js.consumer_info(EVENTS_STREAM, NOTIFIER),
        "purge the DLQ": lambda js: js.purge_stream(DLQ_STREAM),
        "delete EVENTS": lambda js: js.delete_stream(EVENTS_STREAM),
        "delete an event": lambda js: js.delete_msg(EVENTS_STREAM, 1),
    }


@pytest.mark.parametrize("prefix", [ROLE_JS_API, DEFAULT_JS_API])
@pytest.mark.parametrize("attempt", list(_attempts()))
async def test_the_notifier_cannot(
    secured: Secured,
    as_notifier: Client,
    as_worker: Client,
    as_ops: JetStreamContext,
    attempt: str,
    prefix: str,
) -> None:
    await publish_alert(as_ops, make_alert("there-to-be-read"))
    await secured.js("worker", as_worker).publish(
        event_subject("expired", "a", "X"), event_encoder.encode(_expired("real"))
    )
    await as_ops.publish("dlq.alerts.a.X", b"dead")
    names = (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM)
    untouched = await Untouched.of(as_ops, names, consumers_of=(EVENTS_STREAM,))
    with pytest.raises(DENIED):
        await asyncio.wait_for(
            _attempts()[attempt](as_notifier.jetstream(prefix=prefix, timeout=0.5)), 1
        )
    await untouched.check(as_ops)


@pytest.mark.parametrize("subject", ["events.>", "alerts.in.>", "_INBOX.>"])
async def test_the_notifier_cannot_listen_in(
    secured: Secured, as_notifier: Client, as_worker: Client, subject: str
) -> None:
    """Neither events nor alerts as they pass, nor another role's replies."""
    sub = await as_notifier.subscribe(subject)
    await as_notifier.flush()
    await secured.js("worker", as_worker).publish(
        event_subject("expired", "a", "X"), event_encoder.encode(_expired("passing-by"))
    )
    await secured.refused("notifier", "Subscription", subject)
    with pytest.raises(TimeoutError):
        await sub.next_msg(timeout=DENIED_WITHIN)
