"""JetStream publishes answered on the process's own reply inbox, with one deadline sweep.

nats-py's `publish_async` pays per message for what a caller that waits for each
PubAck does not need: a semaphore slot, a random token (an `os.urandom` call), a
done-callback, the PubAck decoded by `json.loads` into a dict and then a dataclass, and
the caller's `asyncio.timeout` on top. Here each publish is a core publish whose reply
subject is the process's inbox plus a counter, the PubAck is decoded by msgspec into a
struct, and one timer fails every publish past its deadline (its own, or the timeout
from now), a few times a second, and only while some publish waits
(docs/performance.md has the figures). The ingress and the worker's events share it.

Each publish still gets its own PubAck (its own `duplicate`), and the caller still waits
for it or its deadline. The PubAck settles its publish as nats-py reads it
(`ops.platform.nats_compat.subscribe_inline`), without a task step of its own; the rest
is public nats-py API: `new_inbox`, `publish` with a reply subject and headers. The inbox
is subscribed on first use, so an owner needs no start-up step; the subscription lives
as long as the connection (nats-py subscribes it again after a reconnect).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import TYPE_CHECKING, Final

import msgspec
from nats.js.errors import APIError, NoStreamResponseError

from ops.platform.nats_compat import subscribe_inline

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

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

    def __init__(self, nc: Client, *, timeout: float, sweep_every: float) -> None:
        self._nc = nc
        self._timeout = timeout
        self._sweep_every = sweep_every
        self._prefix = ""
        self._subscribing: asyncio.Future[None] | None = None
        self._tokens = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[PubAck]] = {}
        self._deadlines: list[tuple[float, int]] = []  # a heap
        self._sweep: asyncio.TimerHandle | None = None

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str], deadline: float | None = None
    ) -> PubAck:
        """Publish and return the PubAck. Raise TimeoutError when it has not come by
        `deadline` (event loop time; default: the timeout from now), give or take a sweep,
        APIError when JetStream refused the message,
        NoStreamResponseError when no stream takes the subject, and whatever nats-py's
        publish or subscribe raises."""
        if not self._prefix:
            await self._subscribed()
        loop = asyncio.get_running_loop()
        token = next(self._tokens)
        future: asyncio.Future[PubAck] = loop.create_future()
        self._waiting[token] = future
        due = loop.time() + self._timeout if deadline is None else deadline
        heapq.heappush(self._deadlines, (due, token))
        if self._sweep is None:
            self._sweep = loop.call_later(self._sweep_every, self._swept)
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

    async def _subscribed(self) -> None:
        """Subscribe to the reply inbox, once for all callers (again after a failure)."""
        subscribing = self._subscribing
        if subscribing is None or (
            subscribing.done() and (subscribing.cancelled() or subscribing.exception() is not None)
        ):
            subscribing = self._subscribing = asyncio.ensure_future(self._subscribe())
        await asyncio.shield(subscribing)

    async def _subscribe(self) -> None:
        prefix = self._nc.new_inbox() + "."
        await subscribe_inline(self._nc, prefix + "*", self._on_reply)
        self._prefix = prefix

    def _on_reply(self, msg: Msg) -> None:
        """Settle the publish a PubAck answers (in nats-py's read loop: no task step)."""
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

    def _swept(self) -> None:
        """Fail every publish past its deadline; sweep again while any still waits."""
        loop = asyncio.get_running_loop()
        self._expire(loop.time())
        self._sweep = loop.call_later(self._sweep_every, self._swept) if self._deadlines else None

    def _expire(self, now: float) -> None:
        deadlines, waiting = self._deadlines, self._waiting
        while deadlines and deadlines[0][0] <= now:
            _, token = heapq.heappop(deadlines)
            future = waiting.get(token)
            if future is not None and not future.done():
                future.set_exception(TimeoutError())
