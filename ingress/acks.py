"""JetStream publishes answered on the ingress's own reply inbox, under one deadline sweep.

nats-py's `publish_async` pays per alert for what the ingress does not need: a
semaphore slot, a random token (an `os.urandom` call), a done-callback, and the
PubAck decoded by `json.loads` into a dict and then a dataclass; and the ingress
added an `asyncio.timeout` (a timer handle) per request on top. Here each publish
is a core publish whose reply subject is the ingress's inbox plus a counter, the
PubAck is decoded by msgspec into a struct, and one task fails every publish whose
deadline has passed, a few times a second (docs/performance.md has the figures).

The answer per alert is unchanged: each publish gets its own PubAck, with its own
`duplicate`, and the caller waits for it (or its deadline) before answering. Only
public nats-py API is used: `new_inbox`, `subscribe` with a callback, `publish`
with a reply subject and headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from typing import TYPE_CHECKING, Final

import msgspec
from nats.js.errors import APIError, NoStreamResponseError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

# A reply that only says "nobody serves this subject": no stream takes it.
_STATUS: Final = "Status"
_NO_RESPONDERS: Final = "503"


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    """JetStream's answer to one publish (`error` set when it refused it)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode: Final = msgspec.json.Decoder(PubAck).decode


class Acks:
    """Publishes to JetStream and waits for each one's PubAck, until its deadline."""

    def __init__(self, nc: Client, *, sweep_every: float) -> None:
        self._nc = nc
        self._sweep_every = sweep_every
        self._prefix = ""
        self._tokens = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[PubAck]] = {}
        self._deadlines: list[tuple[float, int]] = []  # a heap
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe to the reply inbox and start the deadline sweep."""
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        """Stop sweeping; publishes still waiting fail as unanswered."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self._expire(float("inf"))

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str], deadline: float
    ) -> PubAck:
        """Publish and return the PubAck. Raise TimeoutError past `deadline` (event loop
        time), APIError when JetStream refused the message, NoStreamResponseError when
        no stream takes the subject, and whatever nats-py's publish raises."""
        token = next(self._tokens)
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        heapq.heappush(self._deadlines, (deadline, token))
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}{token}", headers=headers
            )
            ack = await future
        finally:
            self._waiting.pop(token, None)
        if ack.error is not None:
            error = ack.error
            raise APIError(code=error.code, description=error.description, err_code=error.err_code)
        return ack

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) :]
        future = self._waiting.get(int(token)) if token.isdigit() else None
        if future is None or future.done():
            return  # after its deadline, or not ours
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        try:
            future.set_result(_decode(msg.data))
        except msgspec.DecodeError as exc:
            future.set_exception(APIError(description=f"unreadable PubAck: {exc}"))

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._sweep_every)
            self._expire(loop.time())

    def _expire(self, now: float) -> None:
        """Fail every publish whose deadline is before `now`."""
        deadlines, waiting = self._deadlines, self._waiting
        while deadlines and deadlines[0][0] <= now:
            _, token = heapq.heappop(deadlines)
            future = waiting.get(token)
            if future is not None and not future.done():
                future.set_exception(TimeoutError())
