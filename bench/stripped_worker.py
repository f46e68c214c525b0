"""`python -m bench.stripped_worker`: the floor under the worker, run as the worker is.

The worker's own settings, connection and pull loop (`worker.pull.Puller`, one per
partition consumer, in the partitions' priority group), but each delivery is only:
decode the alert, record an `executed` event of the real shape on `EVENTS` with its
`Nats-Msg-Id` and await the PubAck (`worker.events.EventLog`), ack. No triage, no halt
read, no risk gate, no broker, no spans, no metrics, no membership (it pulls every
partition: run one). The worker phase drains the same backlog with it at each fsync
level, so that the worker's CPU per alert can be stated against this floor measured in
the same minutes (docs/performance.md).

Not a product: nothing here is reachable from `alertbridge up`; it lives in the bench.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import uvloop

from contracts.messages import Executed
from contracts.subjects import ALERTS_STREAM
from contracts.topology import PARTITION_GROUP, partition_durable
from ops.platform.natsconn import connect, jetstream
from ops.platform.settings import load
from worker.delivery import Delivery
from worker.events import EventLog
from worker.pull import Puller
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = logging.getLogger("bench.stripped_worker")


async def main() -> None:
    """Pull every partition until SIGTERM; each delivery: event, PubAck, ack."""
    settings = load(WorkerSettings, os.environ)
    nc = await connect(settings, name="bench-stripped-worker")
    js = jetstream(nc, settings)
    events = EventLog(js)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)

    async def handle(msg: Msg) -> None:
        d = Delivery.of(msg)
        alert = d.alert
        if alert is None:  # the bench stores none; the worker would dead-letter it
            log.error("undecodable alert at ALERTS seq %d: terminated", d.seq)
            await msg.term()
            return
        at = datetime.now(UTC)
        event = Executed(
            **d.facts(at),
            side=alert.side if alert.side != "close" else "sell",
            quantity=alert.quantity or 1.0,
            order_type=alert.order_type,
            client_order_id=f"ab{alert.id[:30]}",
            broker="stripped",
            broker_order_id="0" * 32,
            status="filled",
            fill_price=alert.price,
            latency=(at - alert.received_at).total_seconds(),
        )
        if await events.record(event):
            await d.msg.ack()

    pullers = [
        Puller(
            js,
            stream=ALERTS_STREAM,
            durable=partition_durable(p),
            batch=100,
            handle=handle,
            stopping=stopping,
            fetch_timeout=settings.fetch_timeout,
            group=PARTITION_GROUP,
        ).run()
        for p in range(settings.partitions)
    ]
    # It never unpins its partitions on the way out (the worker does, worker.pull.unpin):
    # the bench runs it last on each server, so no worker waits for a pin it holds.
    try:
        await asyncio.gather(*pullers)
    finally:
        await nc.drain()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
