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
The same threshold makes it news: `LoopWatch` records a `loop_down` event on EVENTS (the
notifier tells people), and a `loop_up` event once the loop is live again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from contracts.messages import LOOP_EVENT_KINDS, LoopDown, LoopUp, event_encoder
from contracts.subjects import event_subject
from worker.errors import backoff

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from opentelemetry.metrics import Counter

log = logging.getLogger("worker.supervise")

RESTART_BACKOFF: Final = (0.5, 1.0, 2.0, 4.0)  # seconds before the 1st, 2nd, … restart
HEALTHY_AFTER: Final = 2.0  # seconds a run must last to end a failure streak
UNREADY_AFTER: Final = 3.0  # seconds a loop may be down before /readyz says so
WATCH_EVERY: Final = 1.0  # seconds between LoopWatch's looks at the loops

# Every supervised loop of this process (a process runs one Worker): what LoopWatch sees.
_LOOPS: weakref.WeakSet[Supervised] = weakref.WeakSet()


class Supervised:
    """One consume loop, under the name `name`; `start()` makes a fresh run of it."""

    def __init__(self, name: str, start: Callable[[], Awaitable[None]], restarts: Counter) -> None:
        self.name = name
        self._start = start
        self._restarts = restarts
        self._running_since: float | None = None  # the current run's start (None: none)
        self._failing_since: float | None = None  # the current failure streak's start
        self._last_error: Exception | None = None
        _LOOPS.add(self)

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

    @property
    def last_error(self) -> Exception | None:
        """What ended the last failed run."""
        return self._last_error

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


class LoopWatch:
    """Records on EVENTS each loop of this process that has been down for longer than
    `UNREADY_AFTER` (`loop_down`), and its return (`loop_up`). A record that cannot be
    stored (NATS down: often why the loop is) is tried again at the next look."""

    def __init__(self, publish: Callable[[str, bytes], Awaitable[object]]) -> None:
        self._publish = publish
        self._worker = f"{socket.gethostname()}:{os.getpid()}"
        self._down: dict[str, float] = {}  # loop name -> since when, once recorded down

    async def run(self, stopping: asyncio.Event) -> None:
        """Look every `WATCH_EVERY` seconds until `stopping`."""
        while not stopping.is_set():
            await self.look(time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_EVERY):
                    await stopping.wait()

    async def look(self, now: float) -> None:
        """Record what changed since the last look."""
        for loop in list(_LOOPS):
            down = loop.down_for(now)
            if loop.name not in self._down and down > UNREADY_AFTER:
                event: LoopDown | LoopUp = LoopDown(
                    worker=self._worker, loop=loop.name, at=datetime.now(UTC),
                    down_for=down, error=repr(loop.last_error),
                )  # fmt: skip
                if await self._record(event):
                    self._down[loop.name] = now - down
            elif loop.name in self._down and down == 0:
                event = LoopUp(
                    worker=self._worker, loop=loop.name, at=datetime.now(UTC),
                    down_for=now - self._down[loop.name],
                )  # fmt: skip
                if await self._record(event):
                    del self._down[loop.name]

    async def _record(self, event: LoopDown | LoopUp) -> bool:
        subject = event_subject(LOOP_EVENT_KINDS[type(event)], event.worker, event.loop)
        try:
            await self._publish(subject, event_encoder.encode(event))
        except Exception as exc:  # noqa: BLE001 - not recorded: tried again at the next look
            log.warning("could not record %s of loop %s: %r", subject, event.loop, exc)
            return False
        return True
