"""What the notifier says: one `Notice` per fact worth a person's attention, and the
summary of those folded into the next message. Pure functions, no I/O.

A notice has an account (None: the whole system, e.g. the DLQ or a worker's loop) and a
kind; the pair is what bursts are folded by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from contracts.messages import DeadLettered, Expired, Halted, LoopDown, LoopUp, Rejected, Resumed
from contracts.risk import EVERY_ACCOUNT

if TYPE_CHECKING:
    from notifier.store import Streak

# How a kind is counted in a summary ("12 more alerts expired ...").
COUNTED: Final = {
    "dead_lettered": "alerts dead-lettered",
    "rejected": "alerts rejected",
    "expired": "alerts expired",
    "broker_down": "broker outages",
    "broker_up": "broker recoveries",
    "dlq_depth": "DLQ depth warnings",
    "loop_down": "consume loops down",
    "loop_up": "consume loops back",
    "halted": "halts",
    "resumed": "resumes",
}
DEAD: Final = frozenset({"dead_lettered", "rejected", "expired"})


@dataclass(frozen=True)
class Notice:
    """One message to send (before folding)."""

    account: str | None
    kind: str
    title: str
    body: str


def dead(event: DeadLettered | Rejected | Expired) -> Notice:
    """An alert that will not be executed unless someone replays it."""
    match event:
        case Rejected():
            kind, why = "rejected", event.reason
            dlq_seq = event.dlq_seq
        case Expired():
            kind = "expired"
            why = f"{event.age:.0f}s old, over its max age of {event.max_age:g}s"
            if event.last_error:
                why += f"; last broker error: {event.last_error}"
            dlq_seq = event.dlq_seq
        case DeadLettered():
            kind, why = "dead_lettered", event.reason
            if event.last_error:
                why += f"; last error: {event.last_error}"
            dlq_seq = event.dlq_seq
    quantity = "as sized by the account" if event.quantity is None else f"{event.quantity:g}"
    replay = (
        f"alertbridge dlq replay {dlq_seq}"
        if dlq_seq is not None
        else "alertbridge dlq ls (find its DLQ id), then alertbridge dlq replay <id>"
    )
    body = "\n".join(
        (
            f"Alert {event.alert_id} on account {event.account} was {kind.replace('_', '-')}.",
            f"symbol: {event.symbol}",
            f"side: {event.side or 'unknown'}",
            f"quantity: {quantity}",
            f"reason: {why}",
            f"alert id: {event.alert_id}",
            f"replay: {replay}",
        )
    )
    title = f"{kind.replace('_', '-')}: {event.account} {event.symbol} {event.side or ''}"
    return Notice(event.account, kind, title.rstrip(), body)


def broker_down(streak: Streak, after: float) -> Notice:
    """An account's broker has failed every call for longer than `after` seconds."""
    body = (
        f"The broker of account {streak.account} has been unreachable for over {after:g}s: "
        f"{streak.failures} attempt(s) failed since the last order went through.\n"
        f"last error: {streak.last_error}\n"
        "Alerts are retried while they are fresh; older ones expire into the DLQ."
    )
    return Notice(streak.account, "broker_down", f"broker down: {streak.account}", body)


def broker_up(streak: Streak, now: float) -> Notice:
    """The account's broker took an order again after being reported down."""
    body = (
        f"The broker of account {streak.account} is reachable again: an order went through "
        f"after {now - streak.since:.0f}s and {streak.failures} failed attempt(s)."
    )
    return Notice(streak.account, "broker_up", f"broker back: {streak.account}", body)


def dlq_depth(depth: int, threshold: int) -> Notice:
    """The DLQ holds more than it should."""
    body = (
        f"The DLQ holds {depth} entries, over the threshold of {threshold}.\n"
        "See them: alertbridge dlq ls; replay them: alertbridge dlq replay --all"
    )
    return Notice(None, "dlq_depth", f"DLQ depth {depth}", body)


def loop(event: LoopDown | LoopUp) -> Notice:
    """A worker's consume loop down for too long, or back."""
    match event:
        case LoopDown():
            body = (
                f"Consume loop {event.loop} of worker {event.worker} has been down for "
                f"{event.down_for:.0f}s: {event.error}"
            )
            return Notice(None, "loop_down", f"loop down: {event.loop} on {event.worker}", body)
        case LoopUp():
            body = (
                f"Consume loop {event.loop} of worker {event.worker} is live again after "
                f"{event.down_for:.0f}s down."
            )
            return Notice(None, "loop_up", f"loop back: {event.loop} on {event.worker}", body)


def control(event: Halted | Resumed) -> Notice:
    """Trading halted or resumed, on one account or all of them."""
    account = None if event.account == EVERY_ACCOUNT else event.account
    where = account or "every account"
    match event:
        case Halted():
            by = " (circuit breaker)" if event.by == "breaker" else ""
            body = f"trading halted on {where}: {event.reason or 'no reason given'}{by}"
            return Notice(account, "halted", f"halted: {where}", body)
        case Resumed():
            return Notice(account, "resumed", f"resumed: {where}", f"trading resumed on {where}")


def summary(account: str | None, kind: str, folded: int, interval: float, latest: str) -> Notice:
    """The messages of (account, kind) folded since the last one went out."""
    where = f" on account {account}" if account else ""
    lines = [f"{folded} more {COUNTED.get(kind, kind)}{where} in the last {_span(interval)}."]
    if latest:
        lines.append(f"latest: {latest}")
    if kind in DEAD:
        lines.append("See them: alertbridge dlq ls")
    title = f"{folded} more {COUNTED.get(kind, kind)}" + (f": {account}" if account else "")
    return Notice(account, kind, title, "\n".join(lines))


def _span(seconds: float) -> str:
    """60 → "minute", 120 → "2 minutes", 30 → "30 seconds"."""
    if seconds == 60:
        return "minute"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} seconds"
