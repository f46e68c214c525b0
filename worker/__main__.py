"""`python -m worker`: provision, then consume until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ops import provision
from ops.natsconn import connect
from ops.settings import SettingsError, WorkerSettings, load
from worker.brokers.paper import PaperBroker
from worker.consumer import Worker

if TYPE_CHECKING:
    from worker.brokers.base import Broker

log = logging.getLogger("worker")


def make_broker(settings: WorkerSettings) -> Broker:
    """The configured broker adapter."""
    if settings.broker == "paper":
        return PaperBroker(Path(settings.paper_db))
    raise SettingsError(f"ALERTBRIDGE_BROKER={settings.broker!r} is not a known broker (paper)")


async def serve(settings: WorkerSettings) -> None:
    """Connect, provision, consume; on a signal stop fetching, finish, drain."""
    broker = make_broker(settings)
    nc = await connect(settings.nats_url, name="alertbridge-worker")
    js = nc.jetstream()
    await provision.apply(js, settings.topology())
    worker = Worker(js, broker, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    log.info("worker consuming %d partitions with the %s broker", settings.partitions, broker.name)
    try:
        await worker.run()
    finally:
        await nc.drain()
        await broker.close()
        log.info("worker stopped")


def main() -> int:
    """Run the worker; exit 2 on a bad setting."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load(WorkerSettings, os.environ)
        asyncio.run(serve(settings))
    except SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
