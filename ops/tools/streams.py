"""Reading a stream back from the start, for the operators' tools."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext


async def read_all(js: JetStreamContext, stream: str, subject: str, batch: int = 256) -> list[Msg]:
    """Every message stored on `subject` (wildcards allowed), oldest first."""
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0
        ),
    )
    found: list[Msg] = []
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        while remaining > 0:
            try:
                msgs = await sub.fetch(min(batch, remaining), timeout=2)
            except NatsTimeoutError:
                break
            found += msgs
            remaining = msgs[-1].metadata.num_pending
    finally:
        await sub.unsubscribe()
    return found
