"""The one pull loop every durable consumer of the worker runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

log = logging.getLogger("worker.pull")


async def pull(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    batch: int,
    handle: Callable[[Msg], Awaitable[None]],
    stopping: asyncio.Event,
    fetch_timeout: float,
) -> None:
    """Fetch from an existing durable consumer and handle each message, until `stopping`.

    Messages already fetched are handled before the loop looks at `stopping` again.
    """
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    try:
        while not stopping.is_set():
            try:
                msgs = await sub.fetch(batch, timeout=fetch_timeout)
            except NatsTimeoutError:
                continue
            except ConnectionClosedError:
                return  # closed for good (shutdown): nothing more to fetch
            except Exception as exc:  # noqa: BLE001 - the loop must outlive NATS hiccups
                log.warning("fetch from %s/%s failed: %r", stream, durable, exc)
                await asyncio.sleep(min(fetch_timeout, 1.0))
                continue
            for msg in msgs:
                await handle(msg)
    finally:
        # A pull subscription left to `drain()` waits on status messages nobody
        # reads (drain then times out after 30 s): end it here.
        with contextlib.suppress(ConnectionClosedError):
            await sub.unsubscribe()
