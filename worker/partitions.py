"""The pull loops of the partitions this worker owns, started and stopped as its share
changes (worker.membership).

Each owned partition has one supervised loop (`worker.supervise`). A partition let go is
stopped as a shutdown stops it: the alert being handled is finished, the pull
subscription drained; then the partition is unpinned so that the worker that took it
over is served at once, not after the pin timeout. A partition taken back before its
last loop has stopped starts again once it has.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from worker.supervise import Supervised

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from opentelemetry.metrics import Counter


class _Loop:
    """One partition's supervised loop, its stop signal and its task."""

    def __init__(self, supervised: Supervised, stop: asyncio.Event, task: asyncio.Task[None]):
        self.supervised = supervised
        self.stop = stop
        self.task = task


class PartitionLoops:
    """`start(p, stop)` makes a fresh run of partition p's loop, which ends once `stop`
    is set; `release(p)` runs after a loop has ended (the unpin)."""

    def __init__(
        self,
        start: Callable[[int, asyncio.Event], Callable[[], Awaitable[None]]],
        release: Callable[[int], Awaitable[None]],
        restarts: Counter,
    ) -> None:
        self._start = start
        self._release = release
        self._restarts = restarts
        self._owned: dict[int, _Loop] = {}
        self._leaving: dict[int, asyncio.Task[None]] = {}
        self._closed = False

    def owned(self) -> frozenset[int]:
        """The partitions this worker pulls now."""
        return frozenset(self._owned)

    def loops(self) -> list[Supervised]:
        """The owned partitions' loops (what /readyz looks at)."""
        return [loop.supervised for loop in self._owned.values()]

    async def assign(self, owned: frozenset[int]) -> None:
        """Pull exactly `owned` from now on (ignored once `close()` was called)."""
        if self._closed:
            return
        for p in sorted(self._owned.keys() - owned):
            self._let_go(p)
        for p in sorted(owned - self._owned.keys()):
            stop = asyncio.Event()
            supervised = Supervised(f"partition-{p}", self._start(p, stop), self._restarts)
            task = asyncio.create_task(self._run(p, supervised, stop, self._leaving.get(p)))
            self._owned[p] = _Loop(supervised, stop, task)

    def close(self) -> list[asyncio.Task[None]]:
        """Let every partition go (shutdown); the tasks to wait for."""
        self._closed = True
        for p in list(self._owned):
            self._let_go(p)
        return list(self._leaving.values())

    def _let_go(self, p: int) -> None:
        loop = self._owned.pop(p)
        loop.stop.set()
        self._leaving[p] = loop.task
        loop.task.add_done_callback(lambda done: self._left(p, done))

    def _left(self, p: int, task: asyncio.Task[None]) -> None:
        if self._leaving.get(p) is task:
            del self._leaving[p]

    async def _run(
        self, p: int, supervised: Supervised, stop: asyncio.Event, after: asyncio.Task[None] | None
    ) -> None:
        if after is not None:  # the loop that had it before is still finishing
            await asyncio.wait([after])
        await supervised.run(stop)
        await self._release(p)
