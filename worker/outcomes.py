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
alert older than its max age is never sent to the broker again (so one that ages during
its retries is never executed). On its first delivery it expires at once; on a
redelivery (or a replay) an earlier attempt may have placed it, so it is `Stale`: the
worker asks the broker (`settle_stale`) and it ends executed if the order exists, expired
only if it does not. `after_call`, after the call: placed (or placed before) is executed,
a `TerminalError` rejected, any other failure retried while the alert is fresh: the
delay is the backoff for its attempt, cut so the retry comes before the max age; when no
retry fits any more the alert is `Stale`, and ends with the broker's last error as its
reason. A new outcome (a halted account, a risk limit) is one row here and one branch in
a step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from contracts.messages import AttemptFailed, Event, Executed, Expired, Rejected
from worker.errors import TerminalError, backoff

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from contracts.messages import Alert
    from ops.platform.accounts import Account
    from worker.accounts import Desk
    from worker.brokers.base import Broker, OrderResult
    from worker.delivery import Delivery

Kind = Literal["executed", "retried", "rejected", "expired"]

# A retry is scheduled to arrive this long before the alert's max age (redelivery is not
# to the millisecond); one that cannot be at least MIN_RETRY_DELAY away is not made.
RETRY_MARGIN: Final = 0.25
MIN_RETRY_DELAY: Final = 0.25


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
    delay: float = 0.0  # a retry's: seconds before the redelivery

    def __post_init__(self) -> None:
        if not isinstance(self.event, RULES[self.kind].event):
            raise TypeError(f"a {self.kind} outcome is recorded by {RULES[self.kind].event}")


class Route(NamedTuple):
    """Where a fresh alert goes: its account, that account's broker, and its max age."""

    alert: Alert
    account: Account
    broker: Broker
    max_age: float = 0.0  # seconds; 0: none

    def age(self, now: datetime) -> float:
        """Seconds since the alert's age counts from (`reference_time`)."""
        return (now - reference_time(self.alert)).total_seconds()


class Stale(NamedTuple):
    """Past its max age after an attempt may have placed it: ask the broker first."""

    route: Route
    last_error: str = ""  # the failure that ended the retries, if one did


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


def triage(d: Delivery, desk: Desk, max_alert_age: float, now: datetime) -> Outcome | Route | Stale:
    """Decide before the broker call: rejected, expired, stale, or the route to execute on.

    The max age is the account's, else `max_alert_age`; 0 means none.
    """
    if d.alert is None:
        return rejected(d, d.undecodable, now)
    try:
        account, broker = desk.for_alert(d.alert)
    except TerminalError as exc:
        return rejected(d, str(exc), now)
    limit = max_alert_age if account.max_alert_age is None else account.max_alert_age
    route = Route(d.alert, account, broker, limit)
    age = route.age(now)
    if not limit or age <= limit:
        return route
    if d.attempts == 1 and d.alert.replay == 0:  # never tried: nothing can be at the broker
        return expired(d, age, limit, now)
    return Stale(route)


def after_call(
    d: Delivery, route: Route, call: Placed | Exception, now: datetime, schedule: tuple[float, ...]
) -> Outcome | Stale:
    """Decide from the broker call's answer or failure: a failure is retried after the
    backoff for its attempt (`schedule`), but only while a retry still comes before the
    max age; after that it is stale, with this failure as its last error."""
    if isinstance(call, Placed):
        return executed(d, route, call, now)
    if isinstance(call, TerminalError):
        return rejected(d, str(call), now)
    error = f"{type(call).__name__}: {call}"  # retryable, or unknown: retried all the same
    delay = backoff(d.attempts, schedule)
    if route.max_age:
        left = route.max_age - route.age(now) - RETRY_MARGIN
        if left < MIN_RETRY_DELAY:
            return Stale(route, error)
        delay = min(delay, left)
    return retried(d, error, delay, now)


def settle_stale(
    d: Delivery,
    stale: Stale,
    found: OrderResult | Exception | None,
    now: datetime,
    schedule: tuple[float, ...],
) -> Outcome:
    """Decide a stale alert from the broker's lookup of its order: there, it is executed
    (placed by an earlier attempt); not there, expired; the lookup failed, retried after
    the backoff for its attempt (until `max_deliver` dead-letters it: never `expired`
    while the broker cannot say that no attempt placed it)."""
    route = stale.route
    if isinstance(found, Exception):
        error = f"could not ask the broker whether an earlier attempt placed it: {found!r}"
        return retried(d, error, backoff(d.attempts, schedule), now)
    if found is not None:
        return executed(d, route, Placed(found, already_done=True), now)
    return expired(d, route.age(now), route.max_age, now, stale.last_error)


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


def retried(d: Delivery, error: str, delay: float, at: datetime) -> Outcome:
    """The attempt failed in a way a later one may not: redelivered after `delay`."""
    event = AttemptFailed(**d.facts(at), error=error)
    return Outcome("retried", event, error=error, delay=delay)


def rejected(d: Delivery, why: str, at: datetime) -> Outcome:
    """The alert can never succeed as sent."""
    event = Rejected(**d.facts(at), reason=why, **d.asked())
    return Outcome("rejected", event, reason=f"terminated: {why}", error=why)


def expired(d: Delivery, age: float, max_age: float, at: datetime, last_error: str = "") -> Outcome:
    """The alert is too old to execute, and no attempt placed it."""
    event = Expired(**d.facts(at), age=age, max_age=max_age, last_error=last_error, **d.asked())
    old = f"{age:.1f}s old, max {max_age:g}s"
    return Outcome("expired", event, reason="expired", error=last_error or old)
