"""The one pull loop every durable consumer of the worker runs.

One pull request asks for `batch` messages and stays open until they have all come or
it expires (after `fetch_timeout`). The server hands out the next message as soon as
the consumer's ack-pending limit allows: for a partition consumer (max_ack_pending 1)
that is right after the last one's ack, so a steady flow of alerts costs no pull
request per alert. (nats-py's `fetch(1)` sends one per message, and waits for it with
a task and a timer of its own: about a tenth of the worker's CPU per alert,
docs/performance.md.)

Each request's reply subject is a token of its own under the subscription's inbox:
the status that ends a request (408 when it expires, 409 when the server drops it)
names the request it ends, so a late status of an abandoned request is ignored. A
request sent before a reconnect, or one that never ends (lost with a server), is
replaced at the next tick. Messages are handled one at a time, in the order they come.
To stop, the subscription is drained: the server drops the open request (no one is
listening for it any more) and what it had sent already is handled.

On a partition consumer (a priority group with the `pinned_client` policy) each request
names the `group`; the server serves one puller at a time, the pinned one, and tells it
so with a `Nats-Pin-Id` header on the messages it sends, an id each later request
carries. A request with a stale id is ended with 423 (another puller was pinned in the
meantime: this one had stopped asking for the pin timeout, or was unpinned): the pin is
forgotten and the next request waits, unserved, until the server pins it again.
`unpin` hands the pin on at once, to a puller that is waiting, when a worker lets a
partition go (worker.membership).

A run fails (raises) when it cannot send its first request, when an exception escapes
`handle` (an ack, nak or term that cannot be sent), or when the connection is closed
under it: its supervisor (worker.supervise) restarts it with a fresh `Puller`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Final

from nats.errors import BadSubscriptionError, ConnectionClosedError
from nats.js.api import Header

from ops.platform.nats_compat import api_prefix, client_of, subscribe_inline

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js.client import JetStreamContext

log = logging.getLogger("worker.pull")

OVERDUE: float = 1.0  # seconds past its expiry after which an open request counts as lost
PIN_ID: Final = "Nats-Pin-Id"
PIN_MISMATCH: Final = "423"  # the request's pin id is not the pinned one (any more)
UNPIN_TIMEOUT: Final = 2.0


class Puller:
    """One durable consumer's open pull request, and the messages it brings."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        batch: int,
        handle: Callable[[Msg], Awaitable[None]],
        stopping: asyncio.Event,
        fetch_timeout: float,
        group: str | None = None,
    ) -> None:
        self._nc: Client = client_of(js)
        self._next = f"{api_prefix(js)}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._name = f"{stream}/{durable}"
        self._batch = batch
        self._handle = handle
        self._stopping = stopping
        self._expires = fetch_timeout
        self._group = group
        self._pin = ""  # the id the server pinned this puller with ("": not pinned)
        self._request = self._body()
        self._inbox = self._nc.new_inbox()
        # Messages and statuses as they come, and a tick (None) now and then.
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._reply = ""  # the open request's reply subject ("" while none is open)
        self._owed = 0  # messages the open request may still bring
        self._count = 0
        self._heard_at = 0.0  # when the request was sent, or the last word on it
        self._reconnects = 0  # the connection's reconnects when the request was sent

    async def run(self) -> None:
        """Pull and handle each message, one at a time, until `stopping`.

        The message being handled when `stopping` is set is finished; then the
        subscription is drained, and what the server had sent before it heard of it is
        handled too.
        """
        sub = await subscribe_inline(self._nc, f"{self._inbox}.*", self._queue.put_nowait)
        ticks = asyncio.create_task(self._tick())
        try:
            await self._ask(first=True)
            await self._consume()
            await self._drain(sub)
            while not self._queue.empty():  # delivered before the server heard we stop
                msg = self._queue.get_nowait()
                if msg is not None and msg.data:
                    await self._handle(msg)
        finally:
            ticks.cancel()
            with contextlib.suppress(ConnectionClosedError, BadSubscriptionError):
                await sub.unsubscribe()

    async def _tick(self) -> None:
        """A tick (None) every half request, to replace a lost request, and one to stop."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._expires / 2):
                    await self._stopping.wait()
            self._queue.put_nowait(None)

    async def _consume(self) -> None:
        """Handle what comes, one at a time, until stopping."""
        while not self._stopping.is_set():
            msg = await self._queue.get()
            if msg is None:
                await self._ask_if_lost()
                continue
            status = (msg.headers or {}).get(Header.STATUS) if not msg.data else None
            if status:
                await self._ended(msg, status)
                continue
            self._owed -= 1
            if self._group is not None and (pin := (msg.headers or {}).get(PIN_ID)):
                self._pinned(pin)
            await self._handle(msg)
            self._heard_at = time.monotonic()
            if self._owed <= 0 and self._reply and not self._stopping.is_set():
                await self._ask()  # all it asked for has come: the request is over

    async def _drain(self, sub: Subscription) -> None:
        """Tell the server we stop (it drops our open request), and take what it sent."""
        # No deadline of our own: a flush cancelled from outside leaves its cancelled
        # future among the PONGs awaited, and when that PONG comes nats-py's read loop
        # fails on it and stops reading (nats-py 2.16). The flush has its own deadline
        # (10 s); the worker's shutdown grace bounds the rest.
        try:
            await sub.drain()  # type: ignore[no-untyped-call]  # untyped in nats-py 2.16
        except Exception as exc:  # noqa: BLE001 - closed or gone: what came is in the queue
            log.debug("draining the pull subscription to %s: %r", self._name, exc)

    async def _ask_if_lost(self) -> None:
        """Ask again when no request is open, or the open one is overdue without a word."""
        if self._stopping.is_set():
            return
        if self._nc.is_closed:  # for good: nothing will come, this run is over
            raise ConnectionClosedError
        if self._reply:
            if self._nc.stats["reconnects"] != self._reconnects:
                log.info("pull request to %s sent before a reconnect; asking again", self._name)
            elif time.monotonic() - self._heard_at > self._expires + OVERDUE:
                log.info("pull request to %s lost; asking again", self._name)
            else:
                return
        await self._ask()

    async def _ended(self, msg: Msg, status: str) -> None:
        """A status: the end of the open request, unless it is about an abandoned one."""
        if msg.subject != self._reply:
            return
        self._reply = ""
        self._heard_at = time.monotonic()
        if status == PIN_MISMATCH:  # another puller is pinned: wait to be pinned again
            log.info("pull request to %s: no longer pinned", self._name)
            self._pinned("")
        elif status != "408":  # 408: expired, the usual end of an idle request
            description = (msg.headers or {}).get(Header.DESCRIPTION, "")
            log.info("pull request to %s ended: %s %s", self._name, status, description)
            await asyncio.sleep(min(self._expires, 1.0))  # e.g. a leader change
        if not self._stopping.is_set():
            await self._ask()

    def _body(self) -> bytes:
        """The pull request: a batch, its expiry, and the group and pin id, if any."""
        request: dict[str, object] = {"batch": self._batch, "expires": int(self._expires * 1e9)}
        if self._group is not None:
            request["group"] = self._group
            if self._pin:
                request["id"] = self._pin
        return json.dumps(request).encode()

    def _pinned(self, pin: str) -> None:
        """Carry `pin` in the requests from now on ("": none, not pinned)."""
        if pin != self._pin:
            self._pin = pin
            self._request = self._body()

    async def _ask(self, *, first: bool = False) -> None:
        """Open a new request (the one open before, if any, is abandoned); a run that
        cannot send its `first` fails, a later one is retried at the next tick."""
        self._count += 1
        self._reply = f"{self._inbox}.{self._count}"
        self._owed = self._batch
        self._heard_at = time.monotonic()
        self._reconnects = self._nc.stats["reconnects"]
        try:
            await self._nc.publish(self._next, self._request, reply=self._reply)
        except Exception as exc:  # a later request is retried at the next tick
            self._reply = ""
            if first:
                raise
            log.warning("pull request to %s failed: %r", self._name, exc)


async def unpin(js: JetStreamContext, *, stream: str, durable: str, group: str) -> None:
    """Let the server pin another puller of `durable` now, rather than after its pin
    timeout: the deliveries go to a request that waits, if any, once the one in flight is
    settled. A failure is logged: the pin then lapses by itself after that timeout."""
    subject = f"{api_prefix(js)}.CONSUMER.UNPIN.{stream}.{durable}"
    try:
        answer = await client_of(js).request(
            subject, json.dumps({"group": group}).encode(), timeout=UNPIN_TIMEOUT
        )
        error = json.loads(answer.data).get("error")
    except Exception as exc:  # noqa: BLE001 - the pin lapses by itself: worth a try only
        error = repr(exc)
    if error:
        log.warning("could not unpin %s/%s: %s", stream, durable, error)
