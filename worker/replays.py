"""The replay service: the workers replay a DLQ entry when the console asks.

The console faces the web, so its NATS role may not store alerts: it sends the DLQ
sequence of the entry to replay to `REPLAY_SERVICE` (core NATS request/reply) and a
worker, which may, replays it (ops.platform.deadletters.answer_replay: the entry's own
alert, with `replay` + 1, its `replayed` event, the entry removed) and answers. The
workers subscribe in one queue group, so each request is answered once. The console's
account may not publish more than a small payload (deploy/nats-server.conf), so a flood
of big requests cannot fill the worker connection's outbound buffer at the server.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import msgspec

from contracts.subjects import REPLAY_QUEUE, REPLAY_SERVICE
from ops.platform.deadletters import answer_replay
from ops.platform.nats_compat import client_of

if TYPE_CHECKING:
    import asyncio

    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

log = logging.getLogger("worker.replays")

# Requests a worker holds before it drops more (a flood from the console costs a bounded
# queue, not the worker's memory; what is dropped times out at the console).
PENDING_REQUESTS = 1000
PENDING_BYTES = 1 << 20


class ReplayService:
    """Answers replay requests until told to stop."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def run(self, stopping: asyncio.Event) -> None:
        """Serve until `stopping`; a run that cannot subscribe fails (and is restarted)."""
        nc = client_of(self._js)
        sub = await nc.subscribe(
            REPLAY_SERVICE, queue=REPLAY_QUEUE, cb=self._answer,
            pending_msgs_limit=PENDING_REQUESTS, pending_bytes_limit=PENDING_BYTES,
        )  # fmt: skip
        try:
            await stopping.wait()
        finally:
            with contextlib.suppress(Exception):  # closed with the connection: nothing to undo
                await sub.unsubscribe()

    async def _answer(self, msg: Msg) -> None:
        answer = await answer_replay(self._js, msg.data)
        if answer.event is not None:
            event = answer.event
            log.info("replayed DLQ entry %d: alert %r", event.dlq_seq, event.alert_id)
        elif answer.outcome in ("refused", "failed"):
            log.warning("replay not done (%s): %r", answer.outcome, answer.detail)
        else:  # a request that names nothing to replay: the console said so already
            log.debug("replay request not done (%s)", answer.outcome)
        if msg.reply:
            try:
                await msg.respond(msgspec.json.encode(answer))
            except Exception as exc:  # noqa: BLE001 - the asker times out; the next one is served
                log.warning("could not answer a replay request: %r", exc)
