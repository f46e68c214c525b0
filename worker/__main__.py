"""`python -m worker`: provision, then consume until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import uvloop

from ops import heap, logs, provision, telemetry
from ops.accounts import load_accounts
from ops.healthserver import health_server
from ops.natsconn import connect
from ops.settings import SettingsError, WorkerSettings, load
from worker.accounts import Desk
from worker.consumer import Worker

if TYPE_CHECKING:
    from uvicorn import Server


log = logging.getLogger("worker")


async def serve(settings: WorkerSettings, *, spans: bool = True) -> None:
    """Connect, provision, consume; on a signal stop fetching, finish, drain.

    `spans`: whether this process records spans (else deliveries make none).
    """
    desk = Desk.from_accounts(load_accounts(os.environ), os.environ, settings.paper_db)
    nc = await connect(settings, name="alertbridge-worker")
    js = nc.jetstream()
    topology = settings.topology()
    await provision.apply(js, topology)
    worker = Worker(js, desk, settings, spans=spans)
    heap.freeze_startup_objects()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)

    async def ready() -> list[str]:
        if not nc.is_connected:
            return ["nats: not connected"]
        return [f"stream {name}: missing" for name in await provision.missing_streams(js, topology)]

    background = [asyncio.create_task(worker.depth.poll(js, topology))]
    server = None
    if settings.health_port:
        server = health_server(ready, settings.health_host, settings.health_port)
        background.append(asyncio.create_task(_serve_health(server, settings.health_port)))
    log.info("worker consuming %d partitions", settings.partitions)
    try:
        await worker.run()
    finally:
        if server is not None:
            server.should_exit = True
        for task in background[:1]:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*background)
        await nc.drain()
        await desk.close()
        log.info("worker stopped")


async def _serve_health(server: Server, port: int) -> None:
    # uvicorn exits the process when it cannot bind; orders matter more than probes.
    try:
        await server.serve()
    except SystemExit:
        log.error("health/metrics port %d unavailable; the worker goes on without it", port)


def main() -> int:
    """Run the worker; exit 2 on a bad setting."""
    logs.setup("alertbridge-worker")
    try:
        settings = load(WorkerSettings, os.environ)
    except SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    providers = telemetry.setup("alertbridge-worker")
    try:
        # uvloop: the event loop's own overhead was a fifth of the worker's CPU.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings, spans=providers.records_spans))
    except SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    finally:
        providers.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
