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
    after_call,
    triage,
)

NOW = datetime(2025, 1, 15, 14, 30, tzinfo=UTC)


class Unused:
    """A broker boundary the decision must never call."""

    name = "unused"

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


def alert_delivery(age: float, attempt: int = 1) -> Delivery:
    alert = msgspec.structs.replace(make_alert("a-1"), received_at=NOW - timedelta(seconds=age))
    return delivery(msgspec.json.encode(alert), attempt=attempt)


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


@pytest.mark.parametrize("attempt", [1, 4])
def test_a_stale_alert_expires_on_any_delivery(attempt: int) -> None:
    outcome = triage(alert_delivery(age=61, attempt=attempt), Desk.single(Unused()), 60, NOW)
    assert isinstance(outcome, Outcome) and outcome.kind == "expired"
    assert isinstance(outcome.event, Expired) and outcome.event.attempts == attempt
    assert (outcome.reason, outcome.error) == ("expired", "61.0s old, max 60s")


def test_the_accounts_max_age_wins_and_zero_means_none() -> None:
    strict = Desk.single(Unused(), Account(max_alert_age=5))
    assert isinstance(triage(alert_delivery(age=10), strict, 60, NOW), Outcome)
    lenient = Desk.single(Unused(), Account(max_alert_age=0))
    assert isinstance(triage(alert_delivery(age=10_000), lenient, 60, NOW), Route)


def test_after_the_call_placed_is_executed_terminal_rejected_anything_else_retried() -> None:
    d = alert_delivery(age=2, attempt=2)
    route = triage(d, Desk.single(Unused()), 60, NOW)
    assert isinstance(route, Route)
    result = OrderResult(
        client_order_id="ab1", broker_order_id="b1", status="filled", side="buy", quantity=1.0
    )
    executed = after_call(d, route, Placed(result, already_done=True), NOW)
    assert isinstance(executed.event, Executed) and executed.event.already_done
    assert executed.event.latency == 2.0 and executed.event.attempts == 2
    rejected = after_call(d, route, OrderRejectedError("no funds"), NOW)
    assert rejected.kind == "rejected" and rejected.reason == "terminated: no funds"
    for failure in (RetryableError("503"), ValueError("a bug")):
        retried = after_call(d, route, failure, NOW)
        assert retried.kind == "retried" and isinstance(retried.event, AttemptFailed)
        assert retried.event.error == f"{type(failure).__name__}: {failure}"
