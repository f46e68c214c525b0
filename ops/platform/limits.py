"""Risk limits per account: the `[accounts.<name>.limits]` table, and the trading-hours window.

    [accounts.default.limits]
    orders_per_minute = 5          # admitted orders in any sliding 60 s
    orders_per_day = 50            # admitted orders in the trading day
    max_daily_notional = 25000     # quantity x price summed over the trading day
    max_position = 100             # net units per symbol (buys minus sells)
    trading_hours = "mon-fri 09:30-16:00 America/New_York"
    halt_after_rejections = 3      # this many broker rejections in a row halt the account

Every key is optional. The trading day is the calendar day in the window's time zone
(UTC without a window). What each limit counts, and when, is docs/risk.md; the counting
itself is the worker's (`worker.ledger`). Parsing is strict: a window the worker could
misread is a start-up error that says what is wrong, never a silent default.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Annotated, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW: Final = re.compile(r"^\s*(?P<days>\S+)\s+(?P<start>\S+)-(?P<end>\S+)\s+(?P<tz>\S+)\s*$")
_CLOCK: Final = re.compile(r"^(?P<h>[01]\d|2[0-3]):(?P<m>[0-5]\d)$")
_WEEK: Final = 7


@dataclass(frozen=True, slots=True)
class TradingHours:
    """When orders may go out: weekdays (0 is Monday), a local start and end, a time zone.

    An end at or before the start crosses midnight (`sun-thu 18:00-17:00`): the weekday
    is the one the session starts on.
    """

    days: frozenset[int]
    start: time
    end: time
    zone: ZoneInfo
    text: str

    @classmethod
    @functools.cache
    def parse(cls, text: str) -> TradingHours:
        """`"mon-fri 09:30-16:00 America/New_York"`; ValueError says what is wrong."""
        found = _WINDOW.match(text)
        if found is None:
            raise ValueError(
                f"trading_hours {text!r}: write it as 'mon-fri 09:30-16:00 America/New_York'"
            )
        try:
            zone = ZoneInfo(found["tz"])
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"trading_hours {text!r}: unknown time zone {found['tz']!r}") from None
        start, end = _clock(text, found["start"]), _clock(text, found["end"])
        if start == end:
            raise ValueError(f"trading_hours {text!r}: the window is empty (start = end)")
        return cls(days=_days(text, found["days"]), start=start, end=end, zone=zone, text=text)

    def is_open(self, now: datetime) -> bool:
        """Whether `now` (an aware datetime) falls inside the window."""
        local = now.astimezone(self.zone)
        day, clock = local.weekday(), local.time().replace(tzinfo=None)
        if self.start < self.end:
            return day in self.days and self.start <= clock < self.end
        # Across midnight: the evening of a listed day, or the morning after one.
        return (day in self.days and clock >= self.start) or (
            (day - 1) % _WEEK in self.days and clock < self.end
        )


def _clock(text: str, value: str) -> time:
    found = _CLOCK.match(value)
    if found is None:
        raise ValueError(f"trading_hours {text!r}: {value!r} is not a time as HH:MM (00:00-23:59)")
    return time(int(found["h"]), int(found["m"]))


def _days(text: str, spec: str) -> frozenset[int]:
    """`mon-fri`, `mon,wed,fri`, `fri-mon` (wrapping), `sat`; each name is three letters."""
    days: set[int] = set()
    for part in spec.lower().split(","):
        first, _, last = part.partition("-")
        for name in (first, last) if last else (first,):
            if name not in DAYS:
                raise ValueError(
                    f"trading_hours {text!r}: {name!r} is not a weekday: use {', '.join(DAYS)}"
                )
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update((a + i) % _WEEK for i in range((b - a) % _WEEK + 1))
    return frozenset(days)


Count = Annotated[int, msgspec.Meta(ge=1)]
Amount = Annotated[float, msgspec.Meta(gt=0)]


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One account's risk limits; None: no limit of that kind."""

    orders_per_minute: Count | None = None
    orders_per_day: Count | None = None
    max_daily_notional: Amount | None = None
    max_position: Amount | None = None
    trading_hours: str | None = None
    halt_after_rejections: Count | None = None

    def __post_init__(self) -> None:
        # msgspec reports a ValueError here as a validation error at `limits`.
        if self.trading_hours is not None:
            TradingHours.parse(self.trading_hours)

    @property
    def window(self) -> TradingHours | None:
        """The parsed trading-hours window."""
        return None if self.trading_hours is None else TradingHours.parse(self.trading_hours)

    @property
    def counts(self) -> bool:
        """Whether any limit needs each order counted (a slot in the account's ledger)."""
        return any(
            limit is not None
            for limit in (
                self.orders_per_minute,
                self.orders_per_day,
                self.max_daily_notional,
                self.max_position,
            )
        )

    def trading_day(self, now: datetime) -> str:
        """The ISO date of the trading day `now` falls in (the window's zone, else UTC)."""
        window = self.window
        return now.astimezone(window.zone if window is not None else UTC).date().isoformat()


def describe_limits(limits: Limits | None) -> str:
    """`, limits: orders_per_minute 5, ...` for `alertbridge config check` ('' without)."""
    if limits is None:
        return ""
    set_ = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in msgspec.structs.asdict(limits).items() if v is not None]  # fmt: skip
    return f", limits: {', '.join(set_)}" if set_ else ""
