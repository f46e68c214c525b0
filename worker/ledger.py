"""Risk ledgers: what each account has done today, shared by every worker, and the limits
read from it.

An order takes a slot in its account's `Ledger` (contracts.risk) *before* the broker
call, and only if no limit would be passed with it; the slot is given back when the
broker refuses the order, and marked done when the broker has it. Every change is a
compare-and-set on the account's key (`Ledgers.change`): two workers admitting at the
same moment are serialised by the server, so no limit is overshot however many workers
run. A redelivery finds its own slot (keyed by alert and replay round) and is neither
counted twice nor refused by its own count. A slot whose alert was retried and then
given up (dead-lettered) stays until it is a day old: a limit errs on the side of
refusing, never of letting one more through.

The functions below are pure (a ledger in, a ledger out); `Ledgers` does the I/O.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Final, NamedTuple, TypeVar

import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import APIError, NotFoundError

from contracts.messages import alert_msg_id
from contracts.risk import (
    EXPECTED_LAST_SUBJECT_SEQ,
    LIMITS_STREAM,
    WRONG_LAST_SEQUENCE,
    Ledger,
    Slot,
    ledger_decoder,
    ledger_encoder,
    ledger_subject,
)
from worker.errors import RetryableError

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.js.client import JetStreamContext

    from contracts.messages import Alert, Side
    from ops.platform.limits import Limits

T = TypeVar("T")
MINUTE: Final = 60.0
KEEP_PENDING: Final = 86_400.0  # a slot never settled (its alert given up) lasts a day
CAS_ATTEMPTS: Final = 50  # lost compare-and-sets in a row before it is a retryable failure


def alert_key(alert: Alert) -> str:
    """A ledger's key for one alert round: its account, id and replay round, hashed short."""
    scoped = f"{alert_msg_id(alert.account, alert.id)}:{alert.replay}"
    return hashlib.blake2b(scoped.encode(), digest_size=10).hexdigest()


class Ask(NamedTuple):
    """What an order would add to its account's ledger."""

    key: str
    symbol: str
    notional: float
    delta: float  # signed units; a close's is minus the position (`close_delta`)
    at: float  # epoch seconds
    day: str  # the trading day, ISO date


def signed(side: Side, quantity: float) -> float:
    """The position change of a buy or sell of `quantity` units."""
    return quantity if side == "buy" else -quantity


def position(ledger: Ledger, symbol: str) -> float:
    """The symbol's position counting the orders still in flight, as if they filled."""
    pending = sum(s.delta for s in ledger.slots.values() if s.symbol == symbol and not s.done)
    return ledger.positions.get(symbol, 0.0) + pending


def refusal(limits: Limits, ledger: Ledger, ask: Ask) -> str | None:
    """The limit this order would pass, said as the rejection's reason; None: none."""
    live = ledger.slots.values()
    if limits.orders_per_minute is not None:
        recent = sum(s.at > ask.at - MINUTE for s in live)
        if recent + 1 > limits.orders_per_minute:
            return f"over orders_per_minute {limits.orders_per_minute}"
    today = [s for s in live if s.day == ask.day]
    if limits.orders_per_day is not None and len(today) + 1 > limits.orders_per_day:
        return f"over orders_per_day {limits.orders_per_day}"
    if limits.max_daily_notional is not None:
        spent = sum(s.notional for s in today)
        if spent + ask.notional > limits.max_daily_notional:
            return (
                f"over max_daily_notional {limits.max_daily_notional:g} "
                f"(today {spent:g}, this order {ask.notional:g})"
            )
    if limits.max_position is not None:
        now = position(ledger, ask.symbol)
        after = now + ask.delta
        if abs(after) > limits.max_position and abs(after) > abs(now):
            return (
                f"over max_position {limits.max_position:g} for {ask.symbol} (would be {after:g})"
            )
    return None


def reserve(ledger: Ledger, ask: Ask) -> Ledger:
    """The ledger with the order's slot taken."""
    slot = Slot(symbol=ask.symbol, at=ask.at, day=ask.day, notional=ask.notional, delta=ask.delta)
    return msgspec.structs.replace(ledger, slots={**ledger.slots, ask.key: slot})


def release(ledger: Ledger, key: str) -> Ledger | None:
    """The ledger without the slot of an order the broker refused (None: no change)."""
    if key not in ledger.slots:
        return None
    slots = {k: s for k, s in ledger.slots.items() if k != key}
    return msgspec.structs.replace(ledger, slots=slots)


def commit(ledger: Ledger, ask: Ask, close: bool) -> Ledger | None:
    """The ledger once the broker has the order: its slot done (taken now if it had none),
    its fill in the position, the rejection streak broken. None: nothing changes."""
    slot = ledger.slots.get(ask.key)
    if slot is not None and slot.done and not ledger.streak:
        return None  # an earlier delivery committed it
    positions = dict(ledger.positions)
    if slot is None or not slot.done:
        held = positions.get(ask.symbol, 0.0)
        positions[ask.symbol] = 0.0 if close else held + ask.delta
    done = msgspec.structs.replace(slot, done=True) if slot is not None else None
    if done is None:
        done = Slot(symbol=ask.symbol, at=ask.at, day=ask.day, notional=ask.notional,
                    delta=ask.delta, done=True)  # fmt: skip
    slots = {**ledger.slots, ask.key: done}
    return msgspec.structs.replace(ledger, slots=slots, positions=positions, streak=())


def rejected(ledger: Ledger, key: str, trip_at: int) -> tuple[Ledger | None, tuple[str, ...]]:
    """One more broker rejection in the streak: the new ledger (None: already counted), and
    the streak that trips the breaker (empty: no trip). A streak of `trip_at` trips it and
    starts a new one, so the account needs `trip_at` fresh rejections to trip it again."""
    if key in ledger.tripped:
        return None, ledger.tripped
    if key in ledger.streak:
        return None, ()
    streak = (*ledger.streak, key)
    if len(streak) < trip_at:
        return msgspec.structs.replace(ledger, streak=streak), ()
    return msgspec.structs.replace(ledger, streak=(), tripped=streak), streak


def prune(ledger: Ledger, now: float, day: str) -> Ledger:
    """Drop the slots no limit reads any more: done ones of past days past the minute
    window, pending ones older than `KEEP_PENDING`."""
    keep = {
        k: s
        for k, s in ledger.slots.items()
        if (s.done and (s.day == day or s.at > now - MINUTE))
        or (not s.done and s.at > now - KEEP_PENDING)
    }
    return ledger if len(keep) == len(ledger.slots) else msgspec.structs.replace(ledger, slots=keep)


class Ledgers:
    """Read and compare-and-set the accounts' ledgers in the LIMITS bucket."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def read(self, account: str) -> tuple[Ledger, int]:
        """The account's ledger and its sequence (0: there is none yet)."""
        try:
            msg = await self._js.get_msg(
                LIMITS_STREAM, subject=ledger_subject(account), direct=True
            )
        except NotFoundError:
            return Ledger(), 0
        except (NatsError, TimeoutError) as exc:
            raise RetryableError(f"risk ledger of {account!r} unreadable: {exc!r}") from None
        return ledger_decoder.decode(msg.data or b"{}"), msg.seq or 0

    async def change(self, account: str, step: Callable[[Ledger], tuple[Ledger | None, T]]) -> T:
        """Apply `step` (pure: the new ledger or None for no change, and a verdict) until
        the write wins its compare-and-set; return the verdict it was written with."""
        for _ in range(CAS_ATTEMPTS):
            ledger, seq = await self.read(account)
            changed, verdict = step(ledger)
            if changed is None:
                return verdict
            try:
                await self._js.publish(
                    ledger_subject(account),
                    ledger_encoder.encode(changed),
                    headers={EXPECTED_LAST_SUBJECT_SEQ: str(seq)},
                )
            except APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    continue  # another worker wrote first: read again
                raise RetryableError(f"risk ledger of {account!r} not written: {exc}") from None
            except (NatsError, TimeoutError) as exc:
                raise RetryableError(f"risk ledger of {account!r} not written: {exc!r}") from None
            return verdict
        raise RetryableError(f"risk ledger of {account!r}: {CAS_ATTEMPTS} writes lost in a row")
