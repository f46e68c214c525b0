"""Reading the bench's nats-server back: counts, ids, executed events (natsq's helpers,
each call on its own connection, bounded)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, TypeVar

import nats

from bench import natsq

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client

T = TypeVar("T")


class Streams:
    """alertbridge's streams on the nats-server at `url`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _run(self, call: Callable[[Client], Awaitable[T]]) -> T:
        async def go() -> T:
            nc = await nats.connect(self.url, connect_timeout=3, allow_reconnect=False)
            try:
                return await call(nc)
            finally:
                await nc.close()

        return asyncio.run(asyncio.wait_for(go(), 600))

    def count(self, stream: str = "ALERTS", subjects: str | None = None) -> natsq.StreamCount:
        """A stream's state, with a subject filter's count if given."""
        return self._run(lambda nc: natsq.count(nc, stream, subjects))

    def stored(self) -> int:
        """How many alerts ALERTS holds."""
        return self.count().messages

    def executed_count(self) -> int:
        """How many `executed` events EVENTS holds."""
        return self.count("EVENTS", "events.executed.>").subjects or 0

    def next_event_seq(self) -> int:
        """The sequence the next event will get (to read only what comes after)."""
        return self.count("EVENTS").last_seq + 1

    def ids(self, stream: str = "ALERTS", seconds: float = 120) -> natsq.IdCheck:
        """Nats-Msg-Ids in `stream`: how many repeat."""
        deadline = time.monotonic() + seconds
        return self._run(lambda nc: natsq.ids(nc, stream, deadline))

    def executed(self, since: int, skip_first: float) -> natsq.ExecutedStats:
        """Rate and latency of the `executed` events from sequence `since`."""
        deadline = time.monotonic() + 300
        return self._run(lambda nc: natsq.executed(nc, since, skip_first, deadline))

    def pending(self) -> natsq.Pending:
        """What the workers have yet to take and to ack."""
        return self._run(natsq.pending)

    def wait_executed(self, target: int, seconds: float) -> bool:
        """Until `target` alerts are executed (True), or `seconds` pass (False)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.executed_count() >= target:
                return True
            time.sleep(0.5)
        return False


def settle(read: Callable[[], int], rounds: int = 50, every: float = 0.2) -> int:
    """Poll `read` until two readings agree (requests in flight have finished)."""
    prev = -1
    cur = read()
    for _ in range(rounds):
        if cur == prev:
            break
        prev = cur
        time.sleep(every)
        cur = read()
    return cur
