"""Reply-subject injection, tried as an attacker holding one role's password would.

nats-server checks permissions on a message's subject, never on its reply subject, and
publishes its own answers (PubAcks, direct gets, pull deliveries) to that reply. With
the roles as users of one account (the configuration before this one) each of these
wrote into a stream the role may not publish to: the ingress forged history in EVENTS
and depth in DLQ, and the worker stored a crafted alert in ALERTS, which was executed.
deploy/nats-server.conf now puts each role in its own NATS account; a service import
maps the reply into the importer's account, where no stream listens.

Each attack is followed by a sentinel request on the same connection (the server
handles a connection's messages in order) and a short grace, then the target stream
must be exactly as it was.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError

from contracts.headers import MSG_ID
from contracts.messages import alert_encoder, alert_msg_id
from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM, alert_subject
from contracts.topology import partition_durable
from ops.platform.settings import ROLE_JS_API
from tests.secured import TOPOLOGY, Secured, publish_alert
from tests.workers import make_alert

GRACE = 0.5  # how long a write that should never come is given to show up anyway
PARTITIONS = int(TOPOLOGY["ALERTBRIDGE_PARTITIONS"])


async def _messages(js: JetStreamContext, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages


async def _settled(client: Client, secured: Secured, role: str) -> None:
    """Once the server has answered a later request of this connection, it has handled
    the attack; give its answer a moment more to land anywhere it might."""
    js = secured.js(role, client)
    assert await js.find_stream_name_by_subject("alerts.in.a.b") == ALERTS_STREAM
    await asyncio.sleep(GRACE)


async def test_the_ingress_cannot_have_its_pubacks_written_into_events_or_the_dlq(
    secured: Secured, as_ingress: Client, as_ops: JetStreamContext
) -> None:
    alert = make_alert("injected")
    for i, reply in enumerate(("events.executed.default.NASDAQ:AAPL", "dlq.alerts.default.X")):
        await as_ingress.publish(
            alert_subject(alert.account, alert.symbol),
            alert_encoder.encode(alert),
            reply=reply,
            headers={MSG_ID: alert_msg_id("default", f"injected-{i}")},
        )
    await _settled(as_ingress, secured, "ingress")
    assert await _messages(as_ops, ALERTS_STREAM) == 2  # the alerts themselves: allowed
    assert await _messages(as_ops, EVENTS_STREAM) == 0
    assert await _messages(as_ops, DLQ_STREAM) == 0


async def test_the_worker_cannot_have_a_direct_get_answered_into_alerts(
    secured: Secured, as_worker: Client, as_ops: JetStreamContext
) -> None:
    """The attack that got a crafted alert executed: put the alert's bytes where the
    worker may write (an event), then ask for them back with `reply` on alerts.in."""
    crafted = alert_encoder.encode(make_alert("crafted", symbol="NASDAQ:MSFT"))
    worker_js = secured.js("worker", as_worker)
    await worker_js.publish("events.executed.default.NASDAQ:MSFT", crafted)
    target = alert_subject("default", "NASDAQ:MSFT")
    await as_worker.publish(
        f"{ROLE_JS_API}.DIRECT.GET.{EVENTS_STREAM}.events.executed.default.NASDAQ:MSFT",
        b"",
        reply=target,
    )
    await as_worker.publish(
        f"{ROLE_JS_API}.DIRECT.GET.{EVENTS_STREAM}", json.dumps({"seq": 1}).encode(), reply=target
    )
    await as_worker.publish(
        f"{ROLE_JS_API}.DIRECT.GET.{ALERTS_STREAM}", json.dumps({"seq": 1}).encode(), reply=target
    )
    await _settled(as_worker, secured, "worker")
    assert await _messages(as_ops, ALERTS_STREAM) == 0


async def test_the_worker_cannot_have_its_event_pubacks_or_deliveries_stored_as_alerts(
    secured: Secured, as_worker: Client, as_ingress: Client, as_ops: JetStreamContext
) -> None:
    await publish_alert(secured.js("ingress", as_ingress), make_alert("delivered"))
    target = alert_subject("default", "NASDAQ:FORGED")
    await as_worker.publish("events.executed.default.X", b"{}", reply=target)
    await as_worker.publish("dlq.alerts.default.X", b"{}", reply=target)
    request = json.dumps({"batch": 1, "expires": 1_000_000_000}).encode()
    # The alert is on one of them. In one account ALERTS itself listened on the reply, so
    # the delivery was stored again; here the reply has no listener and nothing comes.
    for p in range(PARTITIONS):
        await as_worker.publish(
            f"{ROLE_JS_API}.CONSUMER.MSG.NEXT.{ALERTS_STREAM}.{partition_durable(p)}",
            request,
            reply=target,
        )
    await _settled(as_worker, secured, "worker")
    assert await _messages(as_ops, ALERTS_STREAM) == 1  # the one the ingress stored
    assert await _messages(as_ops, EVENTS_STREAM) == 1
    assert await _messages(as_ops, DLQ_STREAM) == 1


@pytest.mark.parametrize("role", ["ingress", "worker"])
async def test_no_role_can_name_another_roles_streams(
    secured: Secured, role: str, as_ops: JetStreamContext
) -> None:
    """Subjects outside a role's imports lead nowhere: nothing stored, no PubAck."""
    client = await secured.connect(role)
    try:
        js = secured.js(role, client, timeout=1)
        foreign = {
            "ingress": ["events.executed.default.X", "dlq.alerts.default.X"],
            # (The worker stores alerts now, for the replay service: worker.replays.)
            "worker": ["resends.default.x", "$KV.HALTS.global"],
        }[role]
        for subject in foreign:
            with pytest.raises((NoStreamResponseError, TimeoutError)):
                await js.publish(subject, b"{}")
    finally:
        await client.close()
    for stream in (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM):
        assert await _messages(as_ops, stream) == 0
