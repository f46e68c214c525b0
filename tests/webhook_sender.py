"""A sender that posts alerts to a real ingress as TradingView does, and remembers every
answer: what the sender was told is half of the history a test checks.

Every alert carries an explicit id (`<prefix>-<symbol>-<n>`, n its per-symbol sequence
number) and a tag, its price, that the broker sees as the order's `reference_price`
(tests.chaos_broker). Alerts of one symbol are sent one after another, each only once
the one before was answered; symbols go in parallel.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Planned:
    """One alert to send."""

    tag: int  # 1-based, unique in the run: the alert's price
    id: str
    symbol: str
    side: str

    def body(self) -> bytes:
        """The webhook body."""
        alert = {"id": self.id, "symbol": self.symbol, "side": self.side, "price": self.tag}
        return json.dumps(alert).encode()


def plan(total: int, symbols: list[str], rng: random.Random, prefix: str) -> list[Planned]:
    """`total` alerts over `symbols`, chosen by `rng`, numbered per symbol."""
    counts: dict[str, int] = defaultdict(int)
    alerts = []
    for tag in range(1, total + 1):
        symbol = rng.choice(symbols)
        counts[symbol] += 1
        side = rng.choice(("buy", "sell"))
        alerts.append(Planned(tag, f"{prefix}-{symbol}-{counts[symbol]}", symbol, side))
    return alerts


def by_symbol(alerts: list[Planned]) -> dict[str, list[int]]:
    """Per symbol, the tags in the order they are sent."""
    found: dict[str, list[int]] = defaultdict(list)
    for alert in alerts:
        found[alert.symbol].append(alert.tag)
    return found


@dataclass
class Sender:
    """Posts alerts; a 5xx other than 504 is resent after `resend_after` seconds, at most
    `resends` times (TradingView: after 5 s, 3 times); any other answer, or none, is final.
    """

    http: httpx.AsyncClient
    url: str
    resend_after: float = 0.5
    resends: int = 3
    statuses: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    accepted: dict[str, bool] = field(default_factory=dict)  # id → the 200's `duplicate`
    refused: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds)
    answered_200: list[float] = field(default_factory=list)  # when each 200 came
    accepted_at: dict[str, float] = field(default_factory=dict)  # id → when its 200 came
    # Alerts resent before their 200: seconds from the first sending to the 200.
    waited: dict[str, float] = field(default_factory=dict)

    async def send(self, alert: Planned) -> None:
        """Post until a 200, a final answer, or the resends are spent."""
        first = time.monotonic()
        for attempt in range(1 + self.resends):
            sent_at = time.monotonic()
            try:
                answer = await self.http.post(
                    self.url, content=alert.body(), headers={"Content-Type": "application/json"}
                )
            except httpx.TransportError:
                self.statuses[alert.id].append(0)  # no answer: TradingView does not resend
                return
            status = answer.status_code
            self.statuses[alert.id].append(status)
            if status == 200:
                self.accepted[alert.id] = answer.json()["duplicate"]
                self.answered_200.append(time.monotonic())
                self.accepted_at[alert.id] = self.answered_200[-1]
                if attempt:
                    self.waited[alert.id] = time.monotonic() - first
                return
            if status < 500 or status == 504:
                return
            self.refused.append((sent_at, time.monotonic() - sent_at))
            await asyncio.sleep(self.resend_after)  # the sender's resend delay

    async def send_paced(self, alerts: list[Planned], seconds: float) -> None:
        """Send `alerts` spread over `seconds`: the k-th of n not before k/n of `seconds` from now,
        each symbol's in order."""
        start = time.monotonic()
        gap = seconds / max(len(alerts), 1)

        async def one_symbol(mine: list[Planned]) -> None:
            for alert in mine:
                delay = start + (alert.tag - 1) * gap - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # the load's shape, not a wait for a condition
                await self.send(alert)

        groups: dict[str, list[Planned]] = defaultdict(list)
        for alert in alerts:
            groups[alert.symbol].append(alert)
        await asyncio.gather(*(one_symbol(mine) for mine in groups.values()))

    def not_accepted(self, alerts: list[Planned]) -> dict[str, list[int]]:
        """The alerts never answered 200, with every status they got (0: no answer)."""
        return {a.id: self.statuses[a.id] for a in alerts if a.id not in self.accepted}
