"""The decision without NATS: `triage` before the broker call, `after_call` after it,
and the one table (`RULES`) they feed. Plain calls on real values: a nats-py `Msg` as
the server would deliver it (its metadata lives in the reply subject), no client."""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.messages import AttemptFailed, Executed, Expired, Rejected
from ops.platform.accounts import Account
from tests.workers import make_alert
from worker.accounts import Desk
from worker.brokers.base import Order, OrderResult
from worker.delivery import Delivery
from worker.errors import OrderRejectedError, RetryableError
from worker.outcomes import (
    RULES,
    Kind,
    Outcome,
    Placed,
    Route,
    Settle,
    Stale,
    after_call,
    settle_stale,
    triage,
)

NOW = datetime(2025, 1, 15, 14, 30, tzinfo=UTC)


class Unused:
    """A broker boundary the decision must never call."""

    name = "unused"
    can_lookup = True

    async def place(self, order: Order) -> OrderResult:
        raise AssertionError("the decision called the broker")

    async def lookup(self, order: Order) -> OrderResult | None:
        raise AssertionError("the decision called the broker")

    async def equity(self) -> float | None:
        return None

    async def close(self) -> None:
        return None


def delivery(data: bytes, *, attempt: int = 1, seq: int = 7) -> Delivery:
    """A delivery from partition 3 of ALERTS, as the server would hand it out."""
    reply = f"$JS.ACK.ALERTS.worker-p3.{attempt}.{seq}.{seq}.1736951400000000000.0"
    subject = "alerts.in.default.NASDAQ:AAPL.3"
    return Delivery.of(Msg(Client(), subject=subject, reply=reply, data=data, headers=None))


SCHEDULE = (1.0, 2.0, 5.0, 10.0, 30.0)
RESULT = OrderResult(
    client_order_id="ab1", broker_order_id="b1", status="filled", side="buy", quantity=1.0
)


def alert_delivery(age: float, attempt: int = 1, replay: int = 0) -> Delivery:
    alert = msgspec.structs.replace(
        make_alert("a-1"), received_at=NOW - timedelta(seconds=age), replay=replay
    )
    if replay:
        alert = msgspec.structs.replace(alert, replayed_at=alert.received_at)
    return delivery(msgspec.json.encode(alert), attempt=attempt)


def fresh_route(d: Delivery) -> Route:
    route = triage(d, Desk.single(Unused()), 60, NOW)
    assert isinstance(route, Route)
    return route


def test_every_outcome_has_one_row_and_dead_ends_are_dead_lettered_first() -> None:
    assert set(RULES) == set(typing.get_args(Kind))
    for rule in RULES.values():
        assert rule.dead_letter == (rule.settle is Settle.TERM)  # term never without DLQ


def test_an_outcome_is_recorded_by_its_rows_event() -> None:
    d = alert_delivery(age=1)
    rejected = Rejected(**d.facts(NOW), reason="x")
    with pytest.raises(TypeError, match="executed"):
        Outcome("executed", rejected)


def test_bytes_that_are_not_an_alert_are_rejected_under_their_sequence() -> None:
    d = delivery(b"not json", seq=42)
    outcome = triage(d, Desk.single(Unused()), 60, NOW)
    assert isinstance(outcome, Outcome) and outcome.kind == "rejected"
    assert isinstance(outcome.event, Rejected)
    assert (outcome.event.alert_id, outcome.event.symbol, outcome.event.stream_seq) == (
        "seq:42",
        "NASDAQ:AAPL",
        42,
    )
    assert outcome.reason.startswith("terminated: undecodable alert")


def test_an_alert_no_account_takes_is_rejected() -> None:
    desk = Desk({"other": (Account(), Unused())}, any_name=False)
    outcome = triage(alert_delivery(age=1), desk, 60, NOW)
    assert isinstance(outcome, Outcome) and outcome.kind == "rejected"
    assert "no account 'default'" in outcome.reason


def test_a_stale_alert_on_its_first_delivery_expires_without_asking_the_broker() -> None:
    outcome = triage(alert_delivery(age=61), Desk.single(Unused()), 60, NOW)
    assert isinstance(outcome, Outcome) and outcome.kind == "expired"
    assert isinstance(outcome.event, Expired) and outcome.event.attempts == 1
    assert (outcome.reason, outcome.error) == ("expired", "61.0s old, max 60s")


@pytest.mark.parametrize(("attempt", "replay"), [(4, 0), (1, 2)])
def test_a_stale_redelivery_or_replay_is_looked_up_first(attempt: int, replay: int) -> None:
    """An earlier attempt (or the round before a replay) may have placed it."""
    d = alert_delivery(age=61, attempt=attempt, replay=replay)
    stale = triage(d, Desk.single(Unused()), 60, NOW)
    assert isinstance(stale, Stale) and stale.last_error == ""
    executed = settle_stale(d, stale, RESULT, NOW, SCHEDULE)
    assert executed.kind == "executed" and isinstance(executed.event, Executed)
    assert executed.event.already_done
    expired = settle_stale(d, stale, None, NOW, SCHEDULE)
    assert expired.kind == "expired" and expired.error == "61.0s old, max 60s"
    unknown = settle_stale(d, stale, ConnectionError("refused"), NOW, SCHEDULE)
    assert unknown.kind == "retried" and "could not ask the broker" in unknown.error
    assert unknown.delay == SCHEDULE[min(attempt, len(SCHEDULE)) - 1]


def test_an_alert_exactly_its_max_age_old_still_goes_ahead() -> None:
    """The max age is inclusive: an alert expires only once it is older."""
    assert isinstance(triage(alert_delivery(age=60), Desk.single(Unused()), 60, NOW), Route)
    assert isinstance(triage(alert_delivery(age=60.001), Desk.single(Unused()), 60, NOW), Outcome)


def test_a_dead_end_is_dated_and_names_the_side_and_quantity_asked() -> None:
    """What the people told about a rejected or expired alert see (the notifier)."""
    nobody = Desk({"other": (Account(), Unused())}, any_name=False)
    d = alert_delivery(age=1)
    dead_ends = [
        triage(delivery(b"not json"), Desk.single(Unused()), 60, NOW),
        triage(d, nobody, 60, NOW),
        triage(alert_delivery(age=61), Desk.single(Unused()), 60, NOW),
        after_call(d, fresh_route(d), OrderRejectedError("no funds"), NOW, SCHEDULE),
    ]
    asked = []
    for outcome in dead_ends:
        assert isinstance(outcome, Outcome)
        assert isinstance(outcome.event, Rejected | Expired) and outcome.event.at == NOW
        asked.append((outcome.event.side, outcome.event.quantity))
    assert asked == [(None, None), ("buy", 1.0), ("buy", 1.0), ("buy", 1.0)]


def test_the_executed_event_records_the_brokers_answer() -> None:
    d = alert_delivery(age=2)
    filled = msgspec.structs.replace(RESULT, fill_price=190.25)
    outcome = after_call(d, fresh_route(d), Placed(filled, already_done=False), NOW, SCHEDULE)
    assert isinstance(outcome, Outcome) and isinstance(outcome.event, Executed)
    event = outcome.event
    assert (event.client_order_id, event.broker_order_id, event.broker, event.status) == (
        "ab1",
        "b1",
        "unused",
        "filled",
    )
    assert (event.side, event.quantity, event.fill_price, event.already_done) == (
        "buy",
        1.0,
        190.25,
        False,
    )


def test_the_accounts_max_age_wins_and_zero_means_none() -> None:
    strict = Desk.single(Unused(), Account(max_alert_age=5))
    assert isinstance(triage(alert_delivery(age=10), strict, 60, NOW), Outcome)
    lenient = Desk.single(Unused(), Account(max_alert_age=0))
    assert isinstance(triage(alert_delivery(age=10_000), lenient, 60, NOW), Route)


def test_after_the_call_placed_is_executed_terminal_rejected_anything_else_retried() -> None:
    d = alert_delivery(age=2, attempt=2)
    route = fresh_route(d)
    executed = after_call(d, route, Placed(RESULT, already_done=True), NOW, SCHEDULE)
    assert isinstance(executed, Outcome) and isinstance(executed.event, Executed)
    assert executed.event.already_done
    assert executed.event.latency == 2.0 and executed.event.attempts == 2
    rejected = after_call(d, route, OrderRejectedError("no funds"), NOW, SCHEDULE)
    assert isinstance(rejected, Outcome)
    assert rejected.kind == "rejected" and rejected.reason == "terminated: no funds"
    for failure in (RetryableError("503"), ValueError("a bug")):
        retried = after_call(d, route, failure, NOW, SCHEDULE)
        assert isinstance(retried, Outcome) and retried.kind == "retried"
        assert isinstance(retried.event, AttemptFailed)
        assert retried.event.error == f"{type(failure).__name__}: {failure}"
        assert retried.delay == 2.0  # the backoff for attempt 2


@pytest.mark.parametrize(
    ("age", "attempt", "delay"),
    [
        (3.0, 4, 10.0),  # the schedule's delay fits before the max age
        (18.0, 5, 30.0),
        (48.0, 6, 60 - 48 - 0.25),  # cut: the retry comes just before the max age
        (59.0, 7, 0.75),
        (59.5, 8, 0.25),  # the shortest retry still made: MIN_RETRY_DELAY before the margin
    ],
)
def test_a_retry_comes_before_the_max_age(age: float, attempt: int, delay: float) -> None:
    d = alert_delivery(age=age, attempt=attempt)
    retried = after_call(d, fresh_route(d), RetryableError("503"), NOW, SCHEDULE)
    assert isinstance(retried, Outcome) and retried.kind == "retried"
    assert retried.delay == pytest.approx(delay)


def test_when_no_retry_fits_the_alert_ends_with_the_brokers_last_error() -> None:
    d = alert_delivery(age=59.6, attempt=7)
    stale = after_call(d, fresh_route(d), RetryableError("HTTP 503"), NOW, SCHEDULE)
    assert isinstance(stale, Stale) and stale.last_error == "RetryableError: HTTP 503"
    expired = settle_stale(d, stale, None, NOW, SCHEDULE)
    assert expired.kind == "expired" and isinstance(expired.event, Expired)
    assert expired.error == expired.event.last_error == "RetryableError: HTTP 503"


def test_without_a_max_age_the_schedule_alone_sets_the_delay() -> None:
    d = alert_delivery(age=10_000, attempt=9)
    route = triage(d, Desk.single(Unused(), Account(max_alert_age=0)), 60, NOW)
    assert isinstance(route, Route)
    retried = after_call(d, route, RetryableError("503"), NOW, SCHEDULE)
    assert isinstance(retried, Outcome) and retried.delay == 30.0
