"""A test's own pulls from a partition consumer, which is a pinned priority group:
nats-py's `fetch` cannot name the group, and the server refuses a pull without it
("Priority Group missing"). `PinnedFetch` sends the request the worker's puller sends
(`worker.pull`): the group, and the pin id once the server has handed one out."""

from __future__ import annotations

import json

from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from contracts.subjects import ALERTS_STREAM
from contracts.topology import PARTITION_GROUP
from ops.platform.nats_compat import api_prefix, client_of
from worker.pull import PIN_ID


class PinnedFetch:
    """One message at a time from `durable` on `stream`, keeping the pin."""

    def __init__(self, js: JetStreamContext, durable: str, stream: str = ALERTS_STREAM) -> None:
        self._nc = client_of(js)
        self._next = f"{api_prefix(js)}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.pin = ""

    async def fetch(self, within: float) -> Msg:
        """The next message; TimeoutError when none comes (or the request is refused: the
        status and its description are in the message)."""
        request: dict[str, object] = {
            "batch": 1, "expires": int(within * 1e9), "group": PARTITION_GROUP,
        }  # fmt: skip
        if self.pin:
            request["id"] = self.pin
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        try:
            await self._nc.publish(self._next, json.dumps(request).encode(), reply=inbox)
            msg = await sub.next_msg(timeout=within + 1)
        finally:
            await sub.unsubscribe()
        headers = msg.headers or {}
        if not msg.data and (status := headers.get("Status")):
            raise TimeoutError(f"no message: {status} {headers.get('Description', '')}")
        self.pin = headers.get(PIN_ID, self.pin)
        return msg
