"""Dead letters against a real nats-server: max deliveries via the advisory, terminal,
expired (and an alert that ages while its broker does not answer), a DLQ write that
fails, and the router's crash safety."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts import headers as h
from contracts.messages import AttemptFailed, DeadLettered, Event, Executed, Expired, Rejected
from contracts.subjects import ADVISORIES_STREAM, ALERTS_STREAM, DLQ_STREAM
from contracts.topology import DLQ_ROUTER, partition_durable
from ops.platform import provision
from ops.platform.settings import load
from ops.tools import dlq
from tests.dlq_support import (
    all_events,
    dlq_entries,
    nc_fixture,  # noqa: F401 (the `nc` fixture)
    paper_fixture,  # noqa: F401 (the `paper` fixture)
    settings_fixture,  # noqa: F401 (the `settings` fixture)
)
from tests.pinned import PinnedFetch
from tests.support import eventually
from tests.workers import (
    FlakyBroker,
    make_alert,
    paper_rows,
    partition_of,
    publish,
    run_worker,
    settled,
)
from worker.brokers.base import Order, OrderResult
from worker.brokers.paper import PaperBroker
from worker.dlq import DeadLetters, Router
from worker.errors import DuplicateOrderError, RetryableError
from worker.events import EventLog
from worker.outcomes import reference_time
from worker.settings import WorkerSettings


async def events_once(js: JetStreamContext, *kinds: type[Event]) -> list[Event]:
    """Every event, once one of `kinds` is among them. A DLQ entry is written before the
    event that records it (worker.outcomes RULES; the router likewise), so events read
    the moment the entry shows may not hold it yet."""

    async def found() -> list[Event] | None:
        events = await all_events(js)
        return events if any(isinstance(e, kinds) for e in events) else None

    return await eventually(found)


async def test_max_deliveries_reach_the_dlq_through_the_advisory(
    nc: Client, paper: PaperBroker, settings: WorkerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.dlq")
    js = nc.jetstream()
    seq = await publish(js, make_alert("md-1"))
    await run_worker(nc, FlakyBroker(paper, failures=99), settings)
    (entry,) = await eventually(lambda: dlq_entries(js, 1), within=20)
    assert (entry.alert_id, entry.reason, entry.deliveries, entry.stream_seq) == (
        "md-1", "max_deliveries", 2, seq,
    )  # fmt: skip
    assert entry.last_error == "RetryableError: broker timed out"
    assert entry.subject.startswith("alerts.in.default.NASDAQ:AAPL.")
    original = await js.get_msg(ALERTS_STREAM, seq=seq, direct=True)
    stored = await js.get_msg(DLQ_STREAM, seq=entry.dlq_seq, direct=True)
    assert stored.data == original.data  # the original alert, untouched
    assert stored.headers is not None and stored.headers[h.MSG_ID] == f"ALERTS:{seq}"

    async def dead_lettered() -> list[Event] | None:
        found: list[Event] = [e for e in await all_events(js) if isinstance(e, DeadLettered)]
        return found or None

    (event,) = await eventually(dead_lettered)
    assert isinstance(event, DeadLettered) and event.dlq_seq == entry.dlq_seq
    assert paper_rows(settings.paper_db) == []
    # Logged at INFO, as the README says (the event is recorded before the line).
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "worker.dlq"]
    assert (
        logging.INFO,
        f"ALERTS seq {seq} dead-lettered (max_deliveries) as DLQ {entry.dlq_seq}",
    ) in said


async def test_terminal_failure_is_dead_lettered_once_with_its_reason(
    nc: Client, paper: PaperBroker, settings: WorkerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker")
    js = nc.jetstream()
    await publish(js, make_alert("close-flat", side="close"))  # nothing to close
    await run_worker(nc, paper, settings)
    (entry,) = await eventually(lambda: dlq_entries(js, 1))
    assert entry.reason == "terminated: no open paper position in NASDAQ:AAPL to close"
    # The TERMINATED advisory reaches the router too: it must not add a second entry.
    await _advisories_consumed(js)
    assert len(await dlq.entries(js)) == 1
    kinds = [type(e) for e in await events_once(js, Rejected)]
    assert kinds == [Rejected]
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "worker"]
    assert (logging.INFO, f"alert close-flat dead-lettered: {entry.reason}") in said


async def test_a_stale_alert_is_expired_without_a_broker_call(
    nc: Client, paper: PaperBroker, settings: WorkerSettings
) -> None:
    js = nc.jetstream()
    old = datetime.now(UTC) - timedelta(seconds=settings.max_alert_age + 5)
    await publish(js, make_alert("stale-1", timenow=old))
    broker = FlakyBroker(paper, failures=0)
    await run_worker(nc, broker, settings)
    (entry,) = await eventually(lambda: dlq_entries(js, 1))
    assert entry.reason == "expired" and entry.last_error is not None
    assert "max 60s" in entry.last_error
    assert broker.calls == 0
    (event,) = await events_once(js, Expired)
    assert isinstance(event, Expired) and event.age > 60


async def test_a_future_timenow_does_not_keep_an_old_alert_young(
    nc: Client, paper: PaperBroker, settings: WorkerSettings
) -> None:
    """Age counts from the earlier of `timenow` and receipt: a sender's clock set to
    9999 does not make an alert the ingress received long ago a fresh one."""
    js = nc.jetstream()
    received = datetime.now(UTC) - timedelta(seconds=settings.max_alert_age + 5)
    future = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    alert = msgspec.structs.replace(make_alert("future-1", timenow=future), received_at=received)
    await publish(js, alert)
    broker = FlakyBroker(paper, failures=0)
    await run_worker(nc, broker, settings)
    (entry,) = await eventually(lambda: dlq_entries(js, 1))
    assert entry.reason == "expired"
    assert broker.calls == 0 and paper_rows(settings.paper_db) == []
    (event,) = await events_once(js, Expired)
    assert isinstance(event, Expired) and event.alert_id == "future-1"
    assert settings.max_alert_age < event.age < settings.max_alert_age + 60


class Swallowed(FlakyBroker):
    """Every order reaches the book (which keeps one per client order id), no answer ever
    comes back; the time of each call is kept, at the broker's side. `lookups`: whether
    the broker can still be asked for the order (else its lookups time out too)."""

    def __init__(self, inner: PaperBroker, *, lookups: bool = False, places: bool = True) -> None:
        super().__init__(inner, failures=0)
        self.called_at: list[datetime] = []
        self.lookups = lookups
        self.places = places

    async def place(self, order: Order) -> OrderResult:
        self.called_at.append(datetime.now(UTC))
        if self.places:
            with contextlib.suppress(DuplicateOrderError):
                await self.inner.place(order)
        raise RetryableError("read timeout")

    async def lookup(self, order: Order) -> OrderResult | None:
        if self.lookups:
            return await self.inner.lookup(order)
        raise RetryableError("read timeout")


def aging_settings(worker_env: dict[str, str], max_deliver: int) -> WorkerSettings:
    return load(
        WorkerSettings,
        {
            **worker_env,
            "ALERTBRIDGE_MAX_ALERT_AGE": "2",
            "ALERTBRIDGE_RETRY_BACKOFF": "0.2",
            "ALERTBRIDGE_MAX_DELIVER": str(max_deliver),
        },
    )


async def _aging(
    nc: Client, broker: Swallowed, settings: WorkerSettings, dead: bool
) -> tuple[dlq.DeadLetter | None, list[Event]]:
    """Run one alert through the aging broker until it is settled (and `dead`-lettered);
    its DLQ entry, if any, and every event."""
    js = nc.jetstream()
    await provision.apply(js, settings.topology())
    alert = make_alert("ages")
    await publish(js, alert)
    await run_worker(nc, broker, settings)
    await eventually(lambda: settled(js, settings.partitions), within=30)
    entries = (await eventually(lambda: dlq_entries(js, 1))) if dead else []
    late = [t for t in broker.called_at if (t - alert.received_at).total_seconds() > 2.5]
    assert late == []  # never placed past the max age (0.5 s of slack: guard to call)
    assert len(broker.called_at) >= 2  # retried while fresh
    events = await events_once(js, Executed, Rejected, Expired, DeadLettered)  # its end
    assert len(await dlq.entries(js)) == len(entries) <= 1
    return (entries[0] if entries else None), events


async def test_an_alert_never_placed_is_retried_while_fresh_then_expires_with_the_last_error(
    nc: Client, paper: PaperBroker, worker_env: dict[str, str]
) -> None:
    """The broker fails every call and holds nothing: retried while fresh, then the
    broker is asked, has no such order, and the alert ends expired with the broker's
    last error as its reason; deliveries never ran out first."""
    settings = aging_settings(worker_env, max_deliver=100)
    broker = Swallowed(paper, lookups=True, places=False)
    entry, events = await _aging(nc, broker, settings, dead=True)
    assert entry is not None and entry.reason == "expired"
    assert entry.last_error == "RetryableError: read timeout"
    (expired,) = [e for e in events if isinstance(e, Expired)]
    assert expired.last_error == "RetryableError: read timeout"
    retried = [e for e in events if isinstance(e, AttemptFailed)]
    assert len(retried) + 1 == len(broker.called_at) == expired.attempts
    assert not [e for e in events if isinstance(e, Executed)]
    assert paper_rows(settings.paper_db) == []


async def test_an_alert_placed_by_an_attempt_that_got_no_answer_ends_executed_not_expired(
    nc: Client, paper: PaperBroker, worker_env: dict[str, str]
) -> None:
    """The broker takes the order but never answers: retried while fresh; past the max
    age the broker is asked, has the order, and the alert ends executed (already done)
    with no expired event: one terminal event, true to the broker."""
    settings = aging_settings(worker_env, max_deliver=100)
    broker = Swallowed(paper, lookups=True)
    entry, events = await _aging(nc, broker, settings, dead=False)
    assert entry is None
    (executed,) = [e for e in events if isinstance(e, Executed)]
    assert executed.already_done
    assert not [e for e in events if isinstance(e, Expired | Rejected)]
    assert len(paper_rows(settings.paper_db)) == 1  # placed once, whatever the retries


async def test_a_stale_alert_the_broker_cannot_look_up_is_never_called_expired(
    nc: Client, paper: PaperBroker, worker_env: dict[str, str]
) -> None:
    """Placed, but neither the call nor the lookups answer: the worker cannot say it was
    never placed, so it does not; max deliveries dead-letter it with the lookup's error."""
    settings = aging_settings(worker_env, max_deliver=15)
    broker = Swallowed(paper)
    entry, events = await _aging(nc, broker, settings, dead=True)
    assert entry is not None and entry.reason == "max_deliveries"
    assert entry.last_error is not None and "could not ask the broker" in entry.last_error
    assert not [e for e in events if isinstance(e, Expired | Executed)]
    assert len(paper_rows(settings.paper_db)) == 1


async def test_a_dlq_write_that_fails_leaves_the_alert_unacked_and_loses_nothing(
    nc: Client, paper: PaperBroker, worker_env: dict[str, str]
) -> None:
    """Ops deletes the DLQ stream under the worker: a terminal alert cannot be
    dead-lettered, so it is neither termed nor acked, and comes back until the stream is
    back; then it is dead-lettered once."""
    js = nc.jetstream()
    env = {**worker_env, "ALERTBRIDGE_ACK_WAIT": "1", "ALERTBRIDGE_MAX_DELIVER": "50"}
    settings = load(WorkerSettings, env)
    await provision.apply(js, settings.topology())
    await js.delete_stream(DLQ_STREAM)
    seq = await publish(js, make_alert("no-dlq", quantity=None))  # terminal: no quantity
    durable = partition_durable(await partition_of(js, seq))
    await run_worker(nc, paper, settings)

    async def delivered(times: int) -> bool | None:
        info = await js.consumer_info(ALERTS_STREAM, durable)
        return True if info.delivered.consumer_seq >= times else None

    await eventually(lambda: delivered(3))  # came back twice: neither acked nor termed
    assert [e for e in await all_events(js) if isinstance(e, Rejected)] == []
    assert (await js.stream_info(ADVISORIES_STREAM)).state.messages == 0  # no TERMINATED
    await provision.apply(js, settings.topology())  # ops puts the stream back
    (entry,) = await eventually(lambda: dlq_entries(js, 1))
    assert entry.alert_id == "no-dlq" and entry.reason.startswith("terminated: ")
    assert entry.last_error is not None and "no quantity" in entry.last_error
    assert entry.deliveries >= 3 and entry.stream_seq == seq
    await _advisories_consumed(js)  # the TERMINATED advisory adds no second entry
    await eventually(lambda: settled(js, settings.partitions))
    assert len(await dlq.entries(js)) == 1
    assert [type(e) for e in await events_once(js, Rejected)] == [Rejected]


def test_age_counts_from_the_earlier_of_timenow_and_receipt() -> None:
    received = datetime(2025, 1, 15, 14, 30, 2, tzinfo=UTC)
    earlier, later = received - timedelta(seconds=5), received + timedelta(days=9)
    replayed = received + timedelta(hours=1)
    alert = msgspec.structs.replace(make_alert("a"), received_at=received)
    assert reference_time(alert) == received  # no timenow
    assert reference_time(msgspec.structs.replace(alert, timenow=earlier)) == earlier
    assert reference_time(msgspec.structs.replace(alert, timenow=later)) == received
    # A replay restarts the clock, whatever the sender's time said.
    again = msgspec.structs.replace(alert, timenow=earlier, replayed_at=replayed, replay=1)
    assert reference_time(again) == replayed


async def test_the_router_writes_one_entry_even_if_it_crashed_half_way(
    nc: Client, settings: WorkerSettings
) -> None:
    """No worker runs: the test spends the alert's deliveries itself, so the advisory
    waits for the router, which "crashes" half-way, then runs for real."""
    js = nc.jetstream()
    seq = await publish(js, make_alert("crashy"))
    durable = partition_durable(await partition_of(js, seq))
    partition = PinnedFetch(js, durable)
    for _ in range(settings.max_deliver):
        msg = await partition.fetch(within=5)
        await msg.nak()  # no delay: redelivered at once, until max_deliver
    with pytest.raises(TimeoutError):  # the next request makes the server give up on it
        await partition.fetch(within=1)
    sub = await js.pull_subscribe_bind(durable=DLQ_ROUTER, stream=ADVISORIES_STREAM)
    (advisory,) = await sub.fetch(1, timeout=20)
    assert ".MAX_DELIVERIES." in advisory.subject
    original = await js.get_msg(ALERTS_STREAM, seq=seq, direct=True)
    # The router wrote the entry, then "crashed" before its event and its ack.
    await DeadLetters(js).write(
        data=original.data or b"",
        original_headers=None,
        subject=original.subject or "",
        seq=seq,
        reason="max_deliveries",
        deliveries=2,
        last_error=None,
    )
    await advisory.nak()
    await sub.unsubscribe()
    router = Router(js, DeadLetters(js), EventLog(js))
    stopping = asyncio.Event()
    task = asyncio.create_task(router.run(stopping, fetch_timeout=0.5))
    try:
        await _advisories_consumed(js)
    finally:
        stopping.set()
        await task
    assert len(await dlq.entries(js)) == 1
    assert [type(e) for e in await events_once(js, DeadLettered)] == [DeadLettered]


async def _advisories_consumed(js: JetStreamContext) -> None:
    async def consumed() -> bool | None:
        info = await js.consumer_info(ADVISORIES_STREAM, DLQ_ROUTER)
        stream = await js.stream_info(ADVISORIES_STREAM)
        done = info.delivered.stream_seq >= stream.state.last_seq and info.num_ack_pending == 0
        return True if done and stream.state.messages else None

    await eventually(consumed, within=20)
