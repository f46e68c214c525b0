"""NATS least privilege, checked on a real nats-server running deploy/nats-server.conf.

Each role does its real work as its own user in its own NATS account (the ingress's
Publisher, the worker's Worker with the paper broker, the operators' CLI as a process),
and every door a role must not have is tried: the attempt must fail and leave the
streams as they were. A role's account imports only what it uses, so an API it lacks
has no responder there, under its own prefix or the default one; a subscription
outside its inbox is refused and logged by the server. Reply-subject injection is
tests/test_nats_isolation.py; credentials and TLS, tests/test_nats_credentials.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from contracts.headers import MSG_ID
from contracts.messages import Executed, Expired, alert_encoder, event_kind
from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM, alert_subject
from contracts.topology import partition_durable
from ingress.publisher import Publisher
from ingress.settings import IngressSettings
from ingress.telemetry import IngressMetrics
from ops.platform import provision
from ops.platform.settings import DEFAULT_JS_API, ROLE_JS_API, load
from ops.tools import dlq
from ops.tools.events import read_events
from ops.tools.paths import (
    nats_password_file,
)
from tests.pinned import PinnedFetch
from tests.secured import (
    DENIED,
    DENIED_WITHIN,
    TOPOLOGY,
    Secured,
    fetch_one,
    publish_alert,
    run_cli,
)
from tests.support import eventually, python_module
from tests.workers import make_alert, run_worker
from worker.brokers.base import Order, OrderResult
from worker.brokers.paper import PaperBroker
from worker.dlq import DeadLetters
from worker.errors import RetryableError
from worker.settings import WorkerSettings

# --- the ingress: store alerts, nothing else ----------------------------------------


async def test_the_ingress_stores_alerts_and_gets_its_acks(
    secured: Secured, as_ops: JetStreamContext
) -> None:
    settings = load(IngressSettings, secured.env("ingress", ALERTBRIDGE_SECRETS="s" * 16))
    before = len(secured.violations("ingress"))
    publisher = Publisher(settings, IngressMetrics())
    await publisher.start()
    try:

        async def ready() -> bool | None:
            return True if await publisher.ready() == [] else None

        await eventually(ready, within=5)  # readiness asks for stream names: allowed
        alert = make_alert("ingress-1")
        assert await publisher.publish(alert) == (alert.id, False)
        assert await publisher.publish(alert) == (alert.id, True)  # dedup, PubAck read
        # A body without `id`: its first sending claims the resend key, a resend reads it.
        hashed = make_alert("", symbol="NYSE:KO")
        first, duplicate = await publisher.publish(hashed, digest="d" * 32)
        assert first.startswith("d" * 32 + "-") and duplicate is False
        assert await publisher.publish(hashed, digest="d" * 32) == (first, True)
        stored = await as_ops.stream_info(ALERTS_STREAM)
        assert stored.state.messages == 2
    finally:
        await publisher.stop()
    assert secured.violations("ingress")[before:] == []


def _ingress_attempts() -> dict[str, tuple[Callable[[JetStreamContext], Awaitable[object]], str]]:
    """What the ingress must not do → the JetStream API subject the server refuses."""
    return {
        "direct get": (
            lambda js: js.get_msg(ALERTS_STREAM, seq=1, direct=True),
            "$JS.API.DIRECT.GET.ALERTS",
        ),
        "get": (lambda js: js.get_msg(ALERTS_STREAM, seq=1), "$JS.API.STREAM.MSG.GET.ALERTS"),
        "consumer create": (
            lambda js: js.add_consumer(ALERTS_STREAM, ConsumerConfig(durable_name="spy")),
            "$JS.API.CONSUMER.DURABLE.CREATE.ALERTS.spy",
        ),
        "fetch from the worker's consumer": (
            lambda js: fetch_one(js, ALERTS_STREAM, partition_durable(0)),
            "$JS.API.CONSUMER.MSG.NEXT.ALERTS.worker-p0",
        ),
        "purge": (lambda js: js.purge_stream(ALERTS_STREAM), "$JS.API.STREAM.PURGE.ALERTS"),
        "delete stream": (
            lambda js: js.delete_stream(ALERTS_STREAM),
            "$JS.API.STREAM.DELETE.ALERTS",
        ),
        "delete message": (
            lambda js: js.delete_msg(ALERTS_STREAM, 1),
            "$JS.API.STREAM.MSG.DELETE.ALERTS",
        ),
        "reconfigure": (
            lambda js: js.update_stream(
                provision.stream_config(load(WorkerSettings, TOPOLOGY).topology().streams[0])
            ),
            "$JS.API.STREAM.UPDATE.ALERTS",
        ),
        "forge an event": (
            lambda js: js.publish("events.executed.default.NASDAQ:AAPL", b"{}"),
            "events.executed.default.NASDAQ:AAPL",
        ),
    }


@pytest.mark.parametrize("prefix", [ROLE_JS_API, DEFAULT_JS_API])
@pytest.mark.parametrize("attempt", list(_ingress_attempts()))
async def test_the_ingress_cannot_read_or_change_alerts(
    secured: Secured, as_ingress: Client, as_ops: JetStreamContext, attempt: str, prefix: str
) -> None:
    await publish_alert(as_ops, make_alert("there-to-be-read"))
    before = await as_ops.stream_info(ALERTS_STREAM)
    action, _ = _ingress_attempts()[attempt]
    with pytest.raises(DENIED):
        # (asyncio's own timeout too: delete_msg ignores the context's timeout)
        await asyncio.wait_for(action(as_ingress.jetstream(prefix=prefix, timeout=0.5)), 1)
    after = await as_ops.stream_info(ALERTS_STREAM)
    assert after.state.messages == 1  # untouched
    assert after.config == before.config
    assert (await as_ops.consumer_info(ALERTS_STREAM, partition_durable(0))).num_ack_pending == 0


@pytest.mark.parametrize("subject", ["alerts.in.>", "_INBOX.>"])
async def test_the_ingress_cannot_listen_in(
    secured: Secured, as_ingress: Client, subject: str
) -> None:
    """Neither alerts as they pass nor other processes' replies (the worker's deliveries)."""
    sub = await as_ingress.subscribe(subject)
    await as_ingress.flush()
    js = secured.js("ingress", as_ingress)
    await publish_alert(js, make_alert("passing-by"))  # on alerts.in.>, its reply on _INBOX.>
    await secured.refused("ingress", "Subscription", subject)
    with pytest.raises(TimeoutError):
        await sub.next_msg(timeout=DENIED_WITHIN)


@pytest.mark.parametrize("header", [{"Nats-Rollup": "all"}, {"Nats-TTL": "1s"}])
async def test_the_ingress_cannot_purge_or_expire_alerts_by_header(
    secured: Secured, as_ingress: Client, as_ops: JetStreamContext, header: dict[str, str]
) -> None:
    """Publishing is allowed, so the stream itself must refuse rollups and per-message TTLs."""
    js = secured.js("ingress", as_ingress)
    await publish_alert(js, make_alert("kept"))
    with pytest.raises(APIError, match=r"not permitted|disabled"):
        await js.publish("alerts.in.default.X", b"{}", headers={MSG_ID: "sweeper", **header})
    assert (await as_ops.stream_info(ALERTS_STREAM)).state.messages == 1


# --- the worker: its whole job, but no alerts of its own -----------------------------


class Book(PaperBroker):
    """The paper book, except that one symbol's broker is down for good."""

    down = "NASDAQ:DOWN"

    async def place(self, order: Order) -> OrderResult:
        if order.symbol == self.down:
            raise RetryableError("broker unreachable")
        return await super().place(order)


async def test_the_worker_does_its_whole_job(
    secured: Secured, as_worker: Client, as_ingress: Client, as_ops: JetStreamContext,
    tmp_path: Path,
) -> None:  # fmt: skip
    before = len(secured.violations("worker"))
    settings = load(WorkerSettings, secured.env("worker"))
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    ingress = secured.js("ingress", as_ingress)
    await publish_alert(ingress, make_alert("fills"))
    await publish_alert(ingress, make_alert("too-old", symbol="NYSE:IBM", timenow=old))
    await publish_alert(ingress, make_alert("never-placed", symbol=Book.down))
    worker = await run_worker(as_worker, Book(tmp_path / "paper.db"), settings)
    try:

        async def settled() -> list[dlq.DeadLetter] | None:
            found = await dlq.entries(as_ops)
            return found if len(found) == 2 else None

        dead = await eventually(settled, within=20)
        events = await read_events(as_ops)
    finally:
        worker.stop()
    assert {(e.alert_id, e.reason) for e in dead} == {
        ("too-old", "expired"),  # written by the worker itself, then term
        ("never-placed", "max_deliveries"),  # by the router: advisory + direct get
    }
    assert next(e for e in dead if e.alert_id == "never-placed").last_error  # EVENTS direct get
    executed = [e for e in events if isinstance(e, Executed)]
    assert [e.alert_id for e in executed] == ["fills"]
    assert any(isinstance(e, Expired) for e in events)
    assert {event_kind(e) for e in events} >= {
        "attempt_failed", "dead_lettered", "executed", "expired",
    }  # fmt: skip
    assert secured.violations("worker")[before:] == []


async def test_the_worker_acks_naks_terms_and_keeps_working(
    secured: Secured, as_worker: Client, as_ingress: Client, as_ops: JetStreamContext
) -> None:
    """Every acknowledgement verb, one by one, on a partition consumer."""
    before = len(secured.violations("worker"))
    seq = await publish_alert(secured.js("ingress", as_ingress), make_alert("verbs"))
    stored = await as_ops.get_msg(ALERTS_STREAM, seq=seq, direct=True)
    partition = int((stored.subject or "").rsplit(".", 1)[1])
    js = secured.js("worker", as_worker)
    sub = PinnedFetch(js, partition_durable(partition))
    msg = await sub.fetch(within=2)
    await msg.in_progress()
    await msg.nak()
    again = await sub.fetch(within=2)
    assert again.metadata.num_delivered == 2  # the nak was taken
    await as_worker.publish(again.reply, b"+TERM checked by test")
    router = await js.pull_subscribe_bind(durable="dlq-router", stream="ADVISORIES")
    (advisory,) = await router.fetch(1, timeout=3)
    assert json.loads(advisory.data)["reason"] == "checked by test"
    await advisory.ack_sync()
    await router.unsubscribe()
    assert secured.violations("worker")[before:] == []


@pytest.mark.parametrize("prefix", [ROLE_JS_API, DEFAULT_JS_API])
async def test_the_worker_cannot_change_streams(
    as_worker: Client, as_ops: JetStreamContext, prefix: str
) -> None:
    """Nor provision: STREAM.UPDATE with `max_msgs: 1` purged the DLQ when it could. (It
    may store an alert and delete a DLQ entry, for the replay service: worker.replays;
    tests/test_replay_service.py.)"""
    js = as_worker.jetstream(prefix=prefix, timeout=0.5)
    topology = load(WorkerSettings, TOPOLOGY).topology()
    dlq_spec = next(s for s in topology.streams if s.name == DLQ_STREAM)
    shrunk = provision.stream_config(msgspec.structs.replace(dlq_spec, max_age=1.0))
    shrunk.max_msgs = 1
    await as_ops.publish("dlq.alerts.default.X", b"1")
    await as_ops.publish("dlq.alerts.default.X", b"2")
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: js.purge_stream(ALERTS_STREAM),
        lambda: js.delete_stream(DLQ_STREAM),
        lambda: js.update_stream(shrunk),
        lambda: js.add_stream(provision.stream_config(dlq_spec)),
        lambda: js.delete_msg(ALERTS_STREAM, 1),
        lambda: js.delete_msg(EVENTS_STREAM, 1),
        lambda: js.add_consumer(ALERTS_STREAM, ConsumerConfig(durable_name="spy")),
        lambda: js.delete_consumer(ALERTS_STREAM, partition_durable(0)),
    ]
    for attempt in attempts:
        with pytest.raises(DENIED):
            await asyncio.wait_for(attempt(), 1)
    assert (await as_ops.stream_info(ALERTS_STREAM)).state.messages == 0
    dlq_now = await as_ops.stream_info(DLQ_STREAM)
    assert dlq_now.state.messages == 2 and dlq_now.config.max_msgs == -1
    # Exactly what provisioning made on ALERTS (every role's consumers there): no spy,
    # and partition 0's still in place.
    provisioned = {c.durable for c in topology.consumers if c.stream == ALERTS_STREAM}
    assert partition_durable(0) in provisioned
    assert {c.name for c in await as_ops.consumers_info(ALERTS_STREAM)} == provisioned


async def test_the_worker_waits_for_provisioning_and_says_what_is_missing(
    secured: Secured, as_ops: JetStreamContext, tmp_path: Path
) -> None:
    """A worker process started before `alertbridge provision` names what is missing, does
    not create it, and starts consuming once ops has provisioned."""
    await as_ops.delete_stream(DLQ_STREAM)
    await as_ops.delete_consumer(ALERTS_STREAM, partition_durable(1))
    env = secured.env("worker", ALERTBRIDGE_PAPER_DB=str(tmp_path / "paper.db"))
    log = tmp_path / "worker.log"
    proc = python_module("worker", env, log)
    try:

        async def complained() -> str | None:
            text = log.read_text(encoding="utf-8") if log.exists() else ""
            return text if "alertbridge provision" in text else None

        text = await eventually(complained, within=20)
        assert f"stream {DLQ_STREAM}" in text and f"consumer ALERTS/{partition_durable(1)}" in text
        with pytest.raises(NotFoundError):
            await as_ops.stream_info(DLQ_STREAM)  # the worker made nothing
        await provision.apply(as_ops, load(WorkerSettings, secured.env("ops")).topology())
        ingress = await secured.connect("ingress")
        try:
            await publish_alert(secured.js("ingress", ingress), make_alert("after-provisioning"))
        finally:
            await ingress.close()

        async def executed() -> list[Executed] | None:
            found = [e for e in await read_events(as_ops) if isinstance(e, Executed)]
            return found or None

        await eventually(executed, within=20)
    finally:
        proc.terminate()
        proc.wait(15)


# --- the operators: the CLI ---------------------------------------------------------


async def test_ops_runs_status_and_replays_the_dlq(
    secured: Secured, as_worker: Client, as_ingress: Client, as_ops: JetStreamContext,
    tmp_path: Path,
) -> None:  # fmt: skip
    before = len(secured.violations("ops"))
    alert = make_alert("to-replay", symbol="NYSE:KO")
    seq = await publish_alert(secured.js("ingress", as_ingress), alert)
    dlq_seq, _ = await DeadLetters(secured.js("worker", as_worker)).write(
        data=alert_encoder.encode(alert), original_headers=None,
        subject=alert_subject(alert.account, alert.symbol), seq=seq, reason="rejected: test",
        deliveries=1, last_error=None,
    )  # fmt: skip
    password = tmp_path / "ops.password"
    password.write_text(secured.passwords["ops"] + "\n", encoding="utf-8")
    env = {
        "ALERTBRIDGE_NATS_URL": secured.server.url,
        "ALERTBRIDGE_NATS_USER": "ops",
        "ALERTBRIDGE_NATS_PASSWORD_FILE": str(password),
        "ALERTBRIDGE_VAR": str(tmp_path / "var"),
    }
    status = await asyncio.to_thread(run_cli, env, "status", "--json")
    assert status.returncode == 0, status.stderr
    found = json.loads(status.stdout)
    assert found["missing"] == [] and found["dlq_depth"] == 1

    replay = await asyncio.to_thread(run_cli, env, "dlq", "replay", str(dlq_seq), "--json")
    assert replay.returncode == 0, replay.stderr
    assert (await as_ops.stream_info(DLQ_STREAM)).state.messages == 0
    assert (await as_ops.stream_info(ALERTS_STREAM)).state.messages == 2  # re-queued
    assert [e.alert_id for e in await read_events(as_ops, "events.replayed.>")] == ["to-replay"]
    assert secured.violations("ops")[before:] == []


async def test_the_cli_is_the_local_stacks_ops_user(
    secured: Secured, as_ops: JetStreamContext, tmp_path: Path
) -> None:
    """With no credentials of its own the CLI reads var/nats-ops.password (as `send` var/secret)."""
    var = tmp_path / "var"
    var.mkdir()
    nats_password_file(var, "ops").write_text(secured.passwords["ops"] + "\n", encoding="utf-8")
    env = {"ALERTBRIDGE_NATS_URL": secured.server.url, "ALERTBRIDGE_VAR": str(var)}
    status = await asyncio.to_thread(run_cli, env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["missing"] == []
