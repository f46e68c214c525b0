"""What becomes of a delivery, decided without I/O, and what the worker then does.

`RULES` below is the whole policy, one row per outcome: the event that records it,
whether a DLQ entry comes first, and how the delivery is answered (ack, nak with the
backoff for its attempt, term with the reason). `Worker` carries a row out in a fixed
order: the DLQ entry, then the event, then the answer. A step that fails ends it there:
the alert stays unacked and the server redelivers it, so nothing is acked or termed
before its event is stored, nor termed before its DLQ entry is. Only a nak does not
wait for its event: a redelivery loses nothing.

The decision takes two steps around the broker call. `triage`, before it and on every
delivery: bytes that are not an alert, or an alert no account takes, are rejected; an
alert older than its max age expires (so one that ages during its retries is never
executed). `after_call`, after it: placed (or placed before) is executed, a
`TerminalError` rejected, any other failure retried. A new outcome (a halted account,
a risk limit) is one row here and one branch in a step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from contracts.messages import AttemptFailed, Event, Executed, Expired, Rejected
from worker.errors import TerminalError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from contracts.messages import Alert
    from ops.platform.accounts import Account
    from worker.accounts import Desk
    from worker.brokers.base import Broker, OrderResult
    from worker.delivery import Delivery

Kind = Literal["executed", "retried", "rejected", "expired"]


class Settle(enum.Enum):
    """How a delivery is answered."""

    ACK = "ack"  # done
    NAK = "nak"  # redeliver after backoff(attempts)
    TERM = "term"  # done for good, with the reason (it reaches the MSG_TERMINATED advisory)


class Rule(NamedTuple):
    """One row of the policy."""

    event: type[Event]
    dead_letter: bool  # write the DLQ entry first
    settle: Settle


RULES: Final[Mapping[Kind, Rule]] = MappingProxyType(
    {
        "executed": Rule(Executed, dead_letter=False, settle=Settle.ACK),
        "retried": Rule(AttemptFailed, dead_letter=False, settle=Settle.NAK),
        "rejected": Rule(Rejected, dead_letter=True, settle=Settle.TERM),
        "expired": Rule(Expired, dead_letter=True, settle=Settle.TERM),
    }
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One delivery's outcome: its row of `RULES`, the event that records it, and why."""

    kind: Kind
    event: Event
    reason: str = ""  # a dead end's: the DLQ entry's reason, and the term's
    error: str = ""  # the DLQ entry's last error

    def __post_init__(self) -> None:
        if not isinstance(self.event, RULES[self.kind].event):
            raise TypeError(f"a {self.kind} outcome is recorded by {RULES[self.kind].event}")


class Route(NamedTuple):
    """Where a fresh alert goes: its account, and that account's broker."""

    alert: Alert
    account: Account
    broker: Broker


class Placed(NamedTuple):
    """The broker's answer; `already_done`: an earlier delivery had placed the order."""

    result: OrderResult
    already_done: bool


def reference_time(alert: Alert) -> datetime:
    """What an alert's age counts from: its replay, else the earlier of the sender's fire
    time (`timenow`) and the ingress's receipt. A sender's clock can only make an alert
    older, never younger: a `timenow` in the future would otherwise never expire."""
    if alert.replayed_at is not None:
        return alert.replayed_at
    if alert.timenow is not None and alert.timenow < alert.received_at:
        return alert.timenow
    return alert.received_at


def triage(d: Delivery, desk: Desk, max_alert_age: float, now: datetime) -> Outcome | Route:
    """Decide before the broker call: rejected, expired, or the route to execute on.

    The max age is the account's, else `max_alert_age`; 0 means none.
    """
    if d.alert is None:
        return rejected(d, d.undecodable, now)
    try:
        account, broker = desk.for_alert(d.alert)
    except TerminalError as exc:
        return rejected(d, str(exc), now)
    limit = max_alert_age if account.max_alert_age is None else account.max_alert_age
    age = (now - reference_time(d.alert)).total_seconds()
    if limit and age > limit:
        return expired(d, age, limit, now)
    return Route(d.alert, account, broker)


def after_call(d: Delivery, route: Route, call: Placed | Exception, now: datetime) -> Outcome:
    """Decide from the broker call's answer or failure."""
    if isinstance(call, Placed):
        return executed(d, route, call, now)
    if isinstance(call, TerminalError):
        return rejected(d, str(call), now)
    return retried(d, call, now)  # retryable, or unknown: retried all the same


def executed(d: Delivery, route: Route, placed: Placed, at: datetime) -> Outcome:
    """The order is at the broker (placed now, or found placed by an earlier delivery)."""
    alert, result = route.alert, placed.result
    event = Executed(
        **d.facts(at),
        side=result.side,
        quantity=result.quantity,
        order_type=alert.order_type,
        client_order_id=result.client_order_id,
        broker=route.broker.name,
        broker_order_id=result.broker_order_id,
        status=result.status,
        fill_price=result.fill_price,
        already_done=placed.already_done,
        latency=(at - (alert.replayed_at or alert.received_at)).total_seconds(),
    )
    return Outcome("executed", event)


def retried(d: Delivery, exc: Exception, at: datetime) -> Outcome:
    """The attempt failed in a way a later one may not."""
    error = f"{type(exc).__name__}: {exc}"
    return Outcome("retried", AttemptFailed(**d.facts(at), error=error), error=error)


def rejected(d: Delivery, why: str, at: datetime) -> Outcome:
    """The alert can never succeed as sent."""
    event = Rejected(**d.facts(at), reason=why)
    return Outcome("rejected", event, reason=f"terminated: {why}", error=why)


def expired(d: Delivery, age: float, max_age: float, at: datetime) -> Outcome:
    """The alert is too old to execute."""
    event = Expired(**d.facts(at), age=age, max_age=max_age)
    return Outcome("expired", event, reason="expired", error=f"{age:.1f}s old, max {max_age:g}s")
