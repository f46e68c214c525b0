"""Supervised consume loops: a loop that fails is logged, counted and restarted.

A loop fails when an exception ends it: an ack, nak or term that cannot be sent (a
connection closed, or one that buffers nothing while it reconnects), a request that
cannot be made, a bug. The delivery it was on stays unacked, so the server redelivers
it; what the loop must not do is stay dead. Its supervisor logs the failure at ERROR,
counts it (`alertbridge_worker_loop_restarts_total{loop=…}`) and starts a fresh run
after a backoff: `RESTART_BACKOFF`, doubling, and starting over once a run has lasted
`HEALTHY_AFTER`.

A failure streak makes a loop down until a restart has lasted `HEALTHY_AFTER`: a
restart that fails at once does not make the loop live. A loop down for longer than
`UNREADY_AFTER` is a problem `/readyz` reports, so a partition nobody consumes makes
the worker unready; a single blip (restarted and well within the threshold) does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final

from worker.errors import backoff

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from opentelemetry.metrics import Counter

log = logging.getLogger("worker.supervise")

RESTART_BACKOFF: Final = (0.5, 1.0, 2.0, 4.0)  # seconds before the 1st, 2nd, … restart
HEALTHY_AFTER: Final = 2.0  # seconds a run must last to end a failure streak
UNREADY_AFTER: Final = 3.0  # seconds a loop may be down before /readyz says so


class Supervised:
    """One consume loop, under the name `name`; `start()` makes a fresh run of it."""

    def __init__(self, name: str, start: Callable[[], Awaitable[None]], restarts: Counter) -> None:
        self.name = name
        self._start = start
        self._restarts = restarts
        self._running_since: float | None = None  # the current run's start (None: none)
        self._failing_since: float | None = None  # the current failure streak's start
        self._last_error: Exception | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Run the loop until it ends for `stopping`; restart it whenever it fails."""
        streak = 0  # failures since the last run that lasted HEALTHY_AFTER
        while True:
            self._running_since = started = time.monotonic()
            try:
                await self._start()
                return  # a run ends by itself only when told to stop
            except Exception as exc:  # noqa: BLE001 - supervised: logged, counted, restarted
                if stopping.is_set():
                    log.warning("consume loop %s failed while stopping: %r", self.name, exc)
                    return
                streak = self._failed(exc, started, streak)
            finally:
                self._running_since = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff(streak, RESTART_BACKOFF)):
                    await stopping.wait()
            if stopping.is_set():
                return
            self._restarts.add(1, {"loop": self.name})

    def _failed(self, exc: Exception, started: float, streak: int) -> int:
        """Note and log a failure of the run begun at `started`; return the streak's length."""
        failed = time.monotonic()
        if failed - started >= HEALTHY_AFTER:  # it had been live: a new streak begins
            streak, self._failing_since = 0, None
        if self._failing_since is None:
            self._failing_since = failed
        self._last_error = exc
        streak += 1
        log.error(
            "consume loop %s failed: %r; restarting in %gs",
            self.name,
            exc,
            backoff(streak, RESTART_BACKOFF),
            exc_info=exc if streak == 1 else None,  # the traceback once per streak
        )
        return streak

    def down_for(self, now: float) -> float:
        """Seconds since this loop was last live (0 while it is)."""
        if self._failing_since is None:
            return 0.0
        if self._running_since is not None and now - self._running_since >= HEALTHY_AFTER:
            return 0.0
        return now - self._failing_since

    def problem(self, now: float) -> str | None:
        """What /readyz says of this loop when it has been down too long, else None."""
        down = self.down_for(now)
        if down <= UNREADY_AFTER:
            return None
        return f"consume loop {self.name}: down for {down:.0f}s ({self._last_error!r})"
