"""The one place alertbridge reaches into nats-py's internals (checked against 2.16).

- `client_of(js)`: the connection behind a JetStream context (`js._nc`), and
  `api_prefix(js)`: its API prefix (`js._prefix`). `worker.pull` builds its own pull
  requests: nats-py's `fetch` sends one request (and runs a task and a timer) per
  batch, where one long-lived request per consumer is enough; 2.16 has no public way
  to do that, nor priority groups (the pull request's `group` and pin `id`, and
  `CONSUMER.UNPIN`, are sent by `worker.pull` through the same two). This goes when
  nats-py grows a consume API.
- `client_of_msg(msg)`: the connection a message came on (`msg._client`), to publish
  `+TERM <reason>`: nats-py's `term()` takes no reason, and the reason reaches the
  MSG_TERMINATED advisory (the DLQ's "why"). This goes when `term(reason)` exists.
- `subscribe_inline(nc, subject, sink)`: a subscription whose messages are handed to
  `sink` as nats-py reads them, in its read loop, instead of through the subscription's
  queue and a task of its own (`sub._pending_queue`, `sub._pending_size`). A message
  then costs one task step less: one per PubAck (`ops.platform.acks`, the ingress's
  and the worker's) and one per delivery (`worker.pull`), where the callback only
  resolves a future or queues the message anyway. This goes when nats-py can call a
  plain function per message.

`pyproject.toml` pins nats-py to the minor version named here, and
`tests/test_compat.py` fails when the installed one differs: an upgrade fails a test,
not production.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js.client import JetStreamContext

log = logging.getLogger(__name__)

CHECKED: Final = "2.16"


def client_of(js: JetStreamContext) -> Client:
    """The connection a JetStream context sends on."""
    client: Client = js._nc
    return client


def api_prefix(js: JetStreamContext) -> str:
    """The JetStream API prefix of a context (`$JS.API`, or an imported one)."""
    prefix: str = js._prefix
    return prefix


def client_of_msg(msg: Msg) -> Client:
    """The connection a message was delivered on."""
    client: Client = msg._client
    return client


async def subscribe_inline(nc: Client, subject: str, sink: Callable[[Msg], None]) -> Subscription:
    """Subscribe `subject`, each message handed to `sink` as it is read (see above).

    `sink` runs in nats-py's read loop: it must be quick and must not block; what it
    raises is logged and dropped, never let into the read loop. The subscription is
    otherwise nats-py's: `unsubscribe`, `drain` (nothing is left pending: each message
    was handed over when it came) and the re-subscription after a reconnect; not
    `next_msg` nor `messages`, which read the queue the sink replaces.
    """
    sub = await nc.subscribe(subject)  # no callback: no task of its own
    inline, queued = _Inline(sub, sink), sub._pending_queue
    sub._pending_queue = cast("asyncio.Queue[Msg]", inline)
    while not queued.empty():  # read before the sink was in place (none, in practice)
        inline.put_nowait(queued.get_nowait())
    return sub


class _Inline:
    """Stands in for a subscription's pending queue: every message goes to the sink at
    once, so the queue is always empty. nats-py 2.16 calls `put_nowait` (on each message
    read), `qsize`, `empty`, `join` (draining) and `task_done`, and adds each message's
    size to `_pending_size` before `put_nowait` (taken off here, as its own consumer
    would, or it counts towards the slow-consumer limit for ever)."""

    __slots__ = ("_sink", "_sub")

    def __init__(self, sub: Subscription, sink: Callable[[Msg], None]) -> None:
        self._sub = sub
        self._sink = sink

    def put_nowait(self, msg: Msg) -> None:
        self._sub._pending_size -= len(msg.data)
        try:
            self._sink(msg)
        except Exception:  # nats-py's read loop must go on
            log.exception("handling a message on %s", msg.subject)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    async def join(self) -> None:
        return None

    def task_done(self) -> None:
        return None
