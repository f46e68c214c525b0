"""A batched direct get (`<api>.DIRECT.GET.<stream>` with `batch` or `multi_last`): the
messages it answers with, on an inbox of its own, up to its end marker.

One request reads many messages (the member list, the halt keys, a range of a stream);
the server ends the batch with a `204` status, or answers `404` when there is nothing.
The hot path's halt read keeps one inbox for all its reads instead (worker.halts).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

END: Final = ("204", "404")  # end of the batch; nothing at all


class DirectGetError(Exception):
    """The batch did not end: `status` (another status), or None (no answer in time)."""

    def __init__(self, status: str | None) -> None:
        super().__init__(f"status {status}" if status else "no answer in time")
        self.status = status


async def batch(nc: Client, subject: str, body: bytes, wait: float) -> list[Msg]:
    """Every message the direct get at `subject` answers `body` with, in order, within
    `wait` seconds."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    found: list[Msg] = []
    try:
        await nc.publish(subject, body, reply=inbox)
        async with asyncio.timeout(wait):
            while True:
                msg = await sub.next_msg(timeout=wait)
                status = (msg.headers or {}).get("Status")
                if status in END:
                    return found
                if status is not None:
                    raise DirectGetError(status)
                found.append(msg)
    except TimeoutError:
        raise DirectGetError(None) from None
    finally:
        with contextlib.suppress(Exception):  # a closed connection: nothing to undo
            await sub.unsubscribe()
