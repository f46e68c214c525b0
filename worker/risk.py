"""The risk gate between triage and the broker: the kill switch, the limits, the breaker.

`admit` runs right before each broker call and says why not (a reason the alert is
`rejected` with, and so dead-lettered for a deliberate replay) or lets it through:

    halted (operators or breaker)   "trading halted: <reason>"      worker.halts
    outside the trading hours       "outside trading_hours <window>"
    a counting limit passed         "over orders_per_minute 5", ... worker.ledger

A RetryableError from `admit` (state that cannot be read) is a failed attempt like a
broker timeout: retried, never admitted blind. `after` books the call's result: the
order done, its slot given back on a refusal, and the rejection streak that trips the
circuit breaker (`halt_after_rejections`). Bookkeeping that fails after the broker has
the order never changes the outcome: it is logged, and the limits err towards refusing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from contracts.headers import MSG_ID
from contracts.messages import Halted, event_encoder, halt_event_msg_id
from contracts.risk import Halt, Ledger, breaker_subject, halt_encoder
from contracts.subjects import event_subject
from ops.platform.nats_compat import api_prefix, client_of
from worker import ledger
from worker.accounts import size
from worker.errors import OrderRejectedError, TerminalError
from worker.halts import HaltView
from worker.outcomes import Placed

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from contracts.messages import Alert, Side
    from ops.platform.limits import Limits
    from worker.outcomes import Route

log = logging.getLogger("worker.risk")


class RiskGate:
    """Admits alerts to the broker, and books what the broker did with them."""

    def __init__(self, js: JetStreamContext, default_quantity: float | None) -> None:
        self._js = js
        self._halts = HaltView(client_of(js), api_prefix(js))
        self._ledgers = ledger.Ledgers(js)
        self._default_quantity = default_quantity

    async def admit(self, route: Route, now: datetime) -> str | None:
        """Why this alert may not go to the broker now (None: it may)."""
        alert, limits = route.alert, route.account.limits
        if (halted := await self._halts.reason(alert.account)) is not None:
            return f"trading halted: {halted}"
        if limits is None:
            return None
        window = limits.window
        if window is not None and not window.is_open(now):
            return f"outside trading_hours {window.text}"
        if not limits.counts:
            return None
        if limits.max_daily_notional is not None and _price(alert) is None:
            return f"max_daily_notional needs the alert's price ({alert.symbol})"
        try:
            quantity = await size(alert, route.account, route.broker, self._default_quantity)
        except TerminalError:
            return None  # the broker call refuses it the same way, uncounted
        side: Side = "sell" if alert.side == "close" else alert.side
        wanted = _ask(alert, limits, now, quantity, side)

        def step(book: Ledger) -> tuple[Ledger | None, str | None]:
            if wanted.key in book.slots:
                return None, None  # a redelivery: admitted with its own slot
            ask = _closing(alert, book, wanted)
            book = ledger.prune(book, ask.at, ask.day)
            if (why := ledger.refusal(limits, book, ask)) is not None:
                return None, why
            return ledger.reserve(book, ask), None

        return await self._ledgers.change(alert.account, step)

    async def after(self, route: Route, call: Placed | BaseException, now: datetime) -> None:
        """Book the broker call's result: `Placed`, or the exception it raised."""
        limits = route.account.limits
        if limits is None or not (limits.counts or limits.halt_after_rejections):
            return
        try:
            await self._book(route, limits, call, now)
        except Exception as exc:  # noqa: BLE001 - bookkeeping never changes an outcome
            log.warning("risk ledger of %r not updated: %r", route.alert.account, exc)

    async def _book(
        self, route: Route, limits: Limits, call: Placed | BaseException, now: datetime
    ) -> None:
        alert, key = route.alert, ledger.alert_key(route.alert)
        if isinstance(call, Placed):
            placed = _ask(alert, limits, now, call.result.quantity, call.result.side)
            close = alert.side == "close"
            await self._ledgers.change(
                alert.account, lambda book: (ledger.commit(book, placed, close=close), None)
            )
            return
        if not isinstance(call, TerminalError):
            return  # retried: the slot stays taken, the order may yet be placed
        trip_at = limits.halt_after_rejections if isinstance(call, OrderRejectedError) else None

        def step(book: Ledger) -> tuple[Ledger | None, tuple[str, ...]]:
            changed = ledger.release(book, key)
            if trip_at is None:
                return changed, ()
            streak, trip = ledger.rejected(changed or book, key, trip_at)
            return streak or changed, trip

        if trip := await self._ledgers.change(alert.account, step):
            await self._trip(alert.account, len(trip), trip[0])

    async def _trip(self, account: str, count: int, first: str) -> None:
        """Halt the account: its breaker key, then the `Halted` event (once per streak:
        a redelivered rejection that trips again records no second event)."""
        reason = f"{count} consecutive rejections"
        at = datetime.now(UTC)
        halt = Halt(account=account, halted=True, reason=reason, at=at, by="breaker")
        await self._js.publish(breaker_subject(account), halt_encoder.encode(halt))
        event = Halted(account=account, reason=reason, by="breaker", at=at, halt_id=f"trip:{first}")
        await self._js.publish(
            event_subject("halted", account, "breaker"),
            event_encoder.encode(event),
            headers={MSG_ID: halt_event_msg_id(event)},
        )
        log.error("account %r halted by its circuit breaker: %s", account, reason)


def _price(alert: Alert) -> float | None:
    return alert.limit_price or alert.price


def _ask(alert: Alert, limits: Limits, now: datetime, quantity: float, side: Side) -> ledger.Ask:
    """The slot an order of `quantity` units on `side` takes."""
    return ledger.Ask(
        key=ledger.alert_key(alert), symbol=alert.symbol,
        notional=abs(quantity) * (_price(alert) or 0.0), delta=ledger.signed(side, quantity),
        at=now.timestamp(), day=limits.trading_day(now),
    )  # fmt: skip


def _closing(alert: Alert, book: Ledger, ask: ledger.Ask) -> ledger.Ask:
    """A close's slot: minus the position it closes, worth that much."""
    if alert.side != "close":
        return ask
    held = ledger.position(book, alert.symbol)
    notional = abs(held) * (_price(alert) or 0.0)
    return ledger.Ask(key=ask.key, symbol=ask.symbol, notional=notional, delta=-held,
                      at=ask.at, day=ask.day)  # fmt: skip
