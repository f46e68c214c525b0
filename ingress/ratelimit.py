"""Rate limits (`60/minute`) kept in this process's memory, by the `limits` package.

A sliding-window counter per key: two counters per key and window, no burst of
twice the rate at a window's edge. Each ingress process counts on its own; with
N replicas behind a balancer a sender gets up to N times the rate.
"""

from __future__ import annotations

import math
import time
from typing import Final

from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

_MIN_RETRY_AFTER: Final = 1


class RateLimit:
    """One rate, counted per key; `wait` says whether a request may go on."""

    def __init__(self, rate: str, namespace: str) -> None:
        self._item = parse(rate)
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._namespace = namespace
        self.rate = rate

    async def wait(self, key: str) -> int | None:
        """None when the request may go on; else whole seconds to wait (for `Retry-After`)."""
        if await self._limiter.hit(self._item, self._namespace, key):
            return None
        stats = await self._limiter.get_window_stats(self._item, self._namespace, key)
        return max(_MIN_RETRY_AFTER, math.ceil(stats.reset_time - time.time()))
