"""The console's NATS role, on a real nats-server running deploy/nats-server.conf.

It does its whole job as its own user in its own account (replay a dead letter, halt
and resume, read the queues' state) without one refusal; then every door it must not
have is tried: forging an execution event or a dead letter, tripping a breaker, reading
an event, pulling from a consumer, creating, deleting or purging anything, listening to
alerts, events, dead letters or another role's replies.
Each attempt must fail and leave the streams as they were.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from contracts.headers import MSG_ID, DeadLetterHeaders
from contracts.messages import Expired, Replayed, alert_decoder, event_decoder, event_encoder
from contracts.risk import HALTS_STREAM, Halt, breaker_subject
from contracts.subjects import (
    ALERTS_STREAM,
    DLQ_STREAM,
    EVENTS_STREAM,
    alert_subject,
    dlq_subject,
    event_subject,
)
from contracts.topology import NOTIFIER, partition_durable
from ops.platform import deadletters, halting, queues
from ops.platform.settings import DEFAULT_JS_API, ROLE_JS_API
from tests.secured import DENIED_WITHIN, Secured, publish_alert
from tests.workers import make_alert

DENIED = (TimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)


def _expired(alert_id: str) -> Expired:
    return Expired(
        alert_id=alert_id, account="a", symbol="NASDAQ:AAPL", at=datetime.now(UTC),
        age=99.0, max_age=60.0, attempts=1, stream_seq=1,
    )  # fmt: skip


async def _dead_letter(ops: JetStreamContext, alert_id: str) -> int:
    """An alert in ALERTS and its DLQ entry, as the worker writes them; the DLQ sequence."""
    alert = make_alert(alert_id)
    seq = await publish_alert(ops, alert)
    why = DeadLetterHeaders(
        reason="rejected: halted", deliveries=1, stream_seq=seq,
        subject=alert_subject(alert.account, alert.symbol), at=datetime.now(UTC).isoformat(),
    )  # fmt: skip
    ack = await ops.publish(
        dlq_subject(alert.account, alert.symbol),
        msgspec.json.encode(alert),
        headers=why.to_headers(),
    )
    return ack.seq


async def test_the_console_does_its_whole_job(
    secured: Secured, as_console: Client, as_worker: Client, as_ops: JetStreamContext
) -> None:
    before = len(secured.violations("console"))
    js = secured.js("console", as_console)
    # A replay: read the entry, store the alert again, record it, remove the entry.
    dlq_seq = await _dead_letter(as_ops, "dead")
    entry = await deadletters.entry(js, dlq_seq)
    assert entry.alert_id == "dead" and entry.reason == "rejected: halted"
    done = await deadletters.replay(js, dlq_seq)
    assert (done.alert_id, done.replay, done.dlq_seq) == ("dead", 1, dlq_seq)
    stored = await as_ops.get_msg(ALERTS_STREAM, seq=done.stream_seq)
    assert alert_decoder.decode(stored.data or b"").replay == 1
    last = await as_ops.get_last_msg(EVENTS_STREAM, "events.replayed.>")
    recorded = event_decoder.decode(last.data or b"")
    assert isinstance(recorded, Replayed) and recorded.alert_id == "dead"
    assert (await as_ops.stream_info(DLQ_STREAM)).state.messages == 0
    with pytest.raises(deadletters.NoEntryError):
        await deadletters.replay(js, dlq_seq)  # gone: the same replay cannot run twice
    # The kill switch: halt one account, see it, resume it.
    await halting.record(js, Halt(account="a", halted=True, reason="test", at=datetime.now(UTC)))
    (row,) = await halting.read_halts(as_console, ROLE_JS_API)
    assert (row.account, row.reason) == ("a", "test")
    await halting.record(js, Halt(account="a", halted=False, at=datetime.now(UTC)))
    assert await halting.read_halts(as_console, ROLE_JS_API) == []
    # Queue health.
    found = await queues.status(as_console, ROLE_JS_API)
    assert found.missing == [] and {s.name for s in found.streams} >= {ALERTS_STREAM, DLQ_STREAM}
    assert partition_durable(0) in {c.name for c in found.consumers}
    await as_console.flush()
    assert secured.violations("console")[before:] == []


async def _fetch(js: JetStreamContext, stream: str, durable: str) -> object:
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    try:
        return await sub.fetch(1, timeout=DENIED_WITHIN)
    finally:
        await sub.unsubscribe()


def _attempts() -> dict[str, Callable[[JetStreamContext], Awaitable[object]]]:
    """What the console must not do."""
    forged = event_encoder.encode(_expired("forged"))
    trip = msgspec.json.encode(Halt(account="a", halted=True, at=datetime.now(UTC)))
    return {
        "forge an execution event": lambda js: js.publish(
            event_subject("executed", "a", "X"), forged
        ),
        "forge an expiry": lambda js: js.publish(event_subject("expired", "a", "X"), forged),
        "forge a dead letter": lambda js: js.publish("dlq.alerts.a.X", b"{}"),
        "trip a breaker": lambda js: js.publish(breaker_subject("a"), trip),
        "write a risk ledger": lambda js: js.publish("$KV.LIMITS.ledger.a", b"{}"),
        "read an event": lambda js: js.get_msg(EVENTS_STREAM, seq=1, direct=True),
        "read an event (get)": lambda js: js.get_msg(EVENTS_STREAM, seq=1),
        "read a dead letter (get)": lambda js: js.get_msg(DLQ_STREAM, seq=1),
        "pull a partition": lambda js: _fetch(js, ALERTS_STREAM, partition_durable(0)),
        "pull the notifier's events": lambda js: _fetch(js, EVENTS_STREAM, NOTIFIER),
        "create a consumer on EVENTS": lambda js: js.add_consumer(
            EVENTS_STREAM, ConsumerConfig(durable_name="spy")
        ),
        "delete a consumer": lambda js: js.delete_consumer(EVENTS_STREAM, NOTIFIER),
        "purge the DLQ": lambda js: js.purge_stream(DLQ_STREAM),
        "purge the halts": lambda js: js.purge_stream(HALTS_STREAM),
        "delete EVENTS": lambda js: js.delete_stream(EVENTS_STREAM),
        "delete an alert": lambda js: js.delete_msg(ALERTS_STREAM, 1),
        "delete an event": lambda js: js.delete_msg(EVENTS_STREAM, 1),
    }


@pytest.mark.parametrize("prefix", [ROLE_JS_API, DEFAULT_JS_API])
@pytest.mark.parametrize("attempt", list(_attempts()))
async def test_the_console_cannot(
    secured: Secured,
    as_console: Client,
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
    names = (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM, HALTS_STREAM)
    streams = {name: await as_ops.stream_info(name) for name in names}
    consumers = len(await as_ops.consumers_info(EVENTS_STREAM))
    with pytest.raises(DENIED):
        await asyncio.wait_for(
            _attempts()[attempt](as_console.jetstream(prefix=prefix, timeout=0.5)), 1
        )
    for name, before in streams.items():
        after = await as_ops.stream_info(name)
        assert after.state.messages == before.state.messages, name  # nothing in, nothing out
        assert after.config == before.config, name
    assert len(await as_ops.consumers_info(EVENTS_STREAM)) == consumers
    partition = await as_ops.consumer_info(ALERTS_STREAM, partition_durable(0))
    assert partition.num_ack_pending == 0 and partition.delivered.stream_seq == 0


@pytest.mark.parametrize("subject", ["events.>", "alerts.in.>", "dlq.alerts.>", "_INBOX.>"])
async def test_the_console_cannot_listen_in(
    secured: Secured, as_console: Client, as_ops: JetStreamContext, subject: str
) -> None:
    """Neither events, alerts nor dead letters as they pass, nor another role's replies."""
    sub = await as_console.subscribe(subject)
    await as_console.flush()
    await publish_alert(as_ops, make_alert("passing-by"))
    await as_ops.publish("dlq.alerts.a.X", b"dead", headers={MSG_ID: "listen-in"})
    await as_ops.publish(event_subject("expired", "a", "X"), event_encoder.encode(_expired("x")))
    await secured.refused("console", "Subscription", subject)
    with pytest.raises(TimeoutError):
        await sub.next_msg(timeout=DENIED_WITHIN)
