"""The kill switch as a worker sees it: every halt key, read fresh for each admission.

Why a read per admission and not a KV watch: a watch is a push consumer, whose
deliveries the WORKER account would have to import as a stream export (any consumer's
deliveries, not only the halt keys'), and a watch's state lags by however long the
delivery takes. A direct get needs one service import, and an alert is admitted only on
halt state read after it arrived: an alert published once `alertbridge halt` has
returned is never executed, on any worker, without a timing assumption.

What keeps it cheap: one request reads every halt key (a batched `multi_last` direct
get; a handful of keys at most), and admissions that arrive while a read is in flight
share the next read (`Fresh`): under load one read serves every partition's waiting
alert. A failed read is a retryable failure: the alert is retried, never admitted blind.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import TYPE_CHECKING, Final, Generic, TypeVar

import msgspec

from contracts.risk import (
    HALTS_BUCKET,
    HALTS_STREAM,
    KV_OPERATION,
    Halt,
    Stored,
    active_halt,
    halt_decoder,
    kv_subject,
)
from ops.platform.nats_compat import subscribe_inline
from worker.errors import RetryableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg

T = TypeVar("T")
READ_TIMEOUT: Final = 2.0
_BATCH: Final = 1000  # keys per read; a bucket holds three per account at most
_END: Final = ("204", "404")  # end of batch; no key at all


class Fresh(Generic[T]):
    """Single flight with a freshness promise: `get()` returns the result of a `load()`
    that started after `get()` was called. Callers that come while a load runs share
    the next one, so at most one load runs and one waits."""

    def __init__(self, load: Callable[[], Awaitable[T]]) -> None:
        self._load = load
        self._running: asyncio.Task[T] | None = None
        self._next: asyncio.Task[T] | None = None

    async def get(self) -> T:
        """A result loaded after this call began."""
        if self._next is None:
            self._next = asyncio.create_task(self._after(self._running))
        return await asyncio.shield(self._next)

    async def _after(self, running: asyncio.Task[T] | None) -> T:
        if running is not None:
            await asyncio.wait([running])
        self._running, self._next = self._next, None  # newcomers queue the next load
        return await self._load()


class HaltView:
    """Reads every halt key through the worker's connection (`js_api`: its JetStream
    prefix, where its account maps the direct get in).

    The replies come to one inbox subscribed on the first read, each read under a token
    of its own (a late reply to a read that gave up is dropped), rather than a
    subscription and a `next_msg` timer per read; each is queued for its read as nats-py
    reads it (`subscribe_inline`).
    """

    def __init__(self, nc: Client, js_api: str) -> None:
        self._nc = nc
        self._request = f"{js_api}.DIRECT.GET.{HALTS_STREAM}"
        self._body = json.dumps(
            {"multi_last": [kv_subject(HALTS_BUCKET, ">")], "batch": _BATCH}
        ).encode()
        self._fresh = Fresh(self._read)
        self._prefix = ""
        self._tokens = itertools.count(1)
        self._reads: dict[str, asyncio.Queue[Msg]] = {}

    async def reason(self, account: str) -> str | None:
        """Why `account` is halted, on state read after this call (None: it may trade).

        RetryableError when the keys cannot be read.
        """
        return active_halt(await self._fresh.get(), account)

    async def _read(self) -> dict[str, Stored]:
        found: dict[str, Stored] = {}
        replies: asyncio.Queue[Msg] = asyncio.Queue()
        token = str(next(self._tokens))
        self._reads[token] = replies
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                if not self._prefix:  # once: the inbox every read's replies come to
                    prefix = self._nc.new_inbox() + "."
                    await subscribe_inline(self._nc, prefix + "*", self._on_reply)
                    self._prefix = prefix
                await self._nc.publish(self._request, self._body, reply=self._prefix + token)
                while True:
                    msg = await replies.get()
                    status = (msg.headers or {}).get("Status")
                    if status in _END:
                        return found
                    if status is not None:
                        raise RetryableError(f"halt keys unreadable: status {status}")
                    subject, stored = _stored(msg)
                    found[subject] = stored
        except TimeoutError as exc:
            raise RetryableError(f"halt keys unreadable: {exc!r}") from None
        finally:
            del self._reads[token]

    def _on_reply(self, msg: Msg) -> None:
        replies = self._reads.get(msg.subject[len(self._prefix) :])
        if replies is not None:  # else: for a read that gave up
            replies.put_nowait(msg)


def _stored(msg: Msg) -> tuple[str, Stored]:
    headers = msg.headers or {}
    halt: Halt | None = None
    if not headers.get(KV_OPERATION):  # a delete or purge marker holds no halt
        try:
            halt = halt_decoder.decode(msg.data)
        except msgspec.DecodeError:
            halt = None  # not ours: a breaker message still trips (contracts.risk)
    return headers.get("Nats-Subject", ""), Stored(int(headers.get("Nats-Sequence", "0")), halt)
