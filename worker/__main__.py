"""`python -m worker`: check the topology is there, then consume until SIGTERM/SIGINT.

Provisioning is the ops role's (`alertbridge provision`, `alertbridge up`): a worker
cannot create, change or purge a stream. It waits, saying what is missing, until an
operator has provisioned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Final

import msgspec
import uvloop
from nats.errors import Error as NatsError

from contracts.risk import HALTS_STREAM, LIMITS_STREAM
from contracts.subjects import ADVISORIES_STREAM, ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM
from contracts.topology import MEMBERS_STREAM
from ops.platform import heap, logs, provision
from ops.platform.accounts import worker_accounts
from ops.platform.healthserver import health_server, serve_probes
from ops.platform.lifecycle import EXIT_SETTINGS, run_role, stop_on_signals
from ops.platform.natsconn import connect, jetstream
from ops.platform.settings import SettingsError, load
from worker.accounts import Desk
from worker.consumer import Worker
from worker.settings import WorkerSettings
from worker.supervise import LoopWatch

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from contracts.topology import Topology


log = logging.getLogger("worker")

# What the worker reads, writes and consumes (readiness and the start-up check).
WORKER_STREAMS: Final = (
    ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM, ADVISORIES_STREAM, HALTS_STREAM, LIMITS_STREAM,
    MEMBERS_STREAM,
)  # fmt: skip
# The streams whose consumers are the worker's (EVENTS has the notifier's: not its business,
# and its account cannot even look at it).
WORKER_CONSUMES: Final = (ALERTS_STREAM, ADVISORIES_STREAM)
TOPOLOGY_RECHECK: Final = 2.0  # seconds between checks while something is missing


async def serve(settings: WorkerSettings, *, spans: bool = True) -> int:
    """Connect, wait for the topology, consume; on a signal stop fetching, finish, drain.

    `spans`: whether this process records spans (else deliveries make none). /healthz
    answers from the start; /readyz says what is missing until ops has provisioned, and
    then names any consume loop that has been down for a while (`readiness`). Returns the
    exit status: 0, or EXIT_SETTINGS, without consuming, when the server has more
    partitions than ALERTBRIDGE_PARTITIONS (`_partitions_match`).
    """
    desk = Desk.from_accounts(worker_accounts(os.environ), os.environ, settings.paper_db)
    nc = await connect(settings, name="alertbridge-worker")
    js = jetstream(nc, settings)
    topology = settings.topology()
    stopping = asyncio.Event()
    worker: Worker | None = None

    def stop() -> None:
        stopping.set()
        if worker is not None:
            worker.stop()

    stop_on_signals(stop)

    async def ready() -> list[str]:
        return await readiness(nc, js, topology, worker)

    server = None
    tasks: list[asyncio.Task[None]] = []  # ended by should_exit (health) or cancel (poll)
    if settings.health_port:
        server = health_server(ready, settings.health_host, settings.health_port)
        tasks.append(asyncio.create_task(serve_probes(server, settings.health_port, "worker")))
    poller = watcher = recheck = None
    status = 0

    def outgrown() -> None:  # ops provisioned more partitions while it ran
        nonlocal status
        status = EXIT_SETTINGS
        stop()

    try:
        if (refused := await _not_consuming(js, settings, stopping)) is not None:
            return refused
        worker = Worker(js, desk, settings, spans=spans)
        heap.freeze_startup_objects()
        poller = asyncio.create_task(worker.depth.poll(js, topology))
        watch = LoopWatch(lambda subject, data: js.publish(subject, data, timeout=2))
        watcher = asyncio.create_task(watch.run(stopping))
        recheck = asyncio.create_task(_recheck_partitions(js, settings, stopping, outgrown))
        log.info("worker sharing %d partitions with the others", settings.partitions)
        await worker.run()
    finally:
        if server is not None:
            server.should_exit = True
        for task in (poller, watcher, recheck):
            if task is not None:
                task.cancel()
                tasks.append(task)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)
        await nc.drain()
        await desk.close()
        log.info("worker stopped")
    return status


async def readiness(
    nc: Client, js: JetStreamContext, topology: Topology, worker: Worker | None
) -> list[str]:
    """What /readyz reports (empty: ready): the connection, the streams, and each consume
    loop that has been down for longer than `worker.supervise.UNREADY_AFTER`."""
    loops = worker.problems() if worker is not None else []
    if not nc.is_connected:
        return ["nats: not connected", *loops]
    try:
        names = await provision.missing_streams(js, topology, WORKER_STREAMS)
    except (NatsError, TimeoutError) as exc:  # e.g. JetStream still starting after a restart
        return [f"nats: {exc!r}", *loops]
    return [*(f"stream {name}: missing" for name in names), *loops]


async def _topology_present(
    js: JetStreamContext, settings: WorkerSettings, stopping: asyncio.Event
) -> bool:
    """True once every stream and consumer the worker uses exists (False: told to stop
    first); until then say, at ERROR, what is missing and who creates it."""
    while problems := await provision.missing(js, worker_topology(settings), WORKER_STREAMS):
        log.error(
            "missing on the NATS server: %s. Provisioning is the ops role's: run "
            "`alertbridge provision` (as ops, with the same ALERTBRIDGE_PARTITIONS=%d); "
            "checking again in %gs",
            ", ".join(problems),
            settings.partitions,
            TOPOLOGY_RECHECK,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), TOPOLOGY_RECHECK)
        if stopping.is_set():
            return False
    return True


async def _not_consuming(
    js: JetStreamContext, settings: WorkerSettings, stopping: asyncio.Event
) -> int | None:
    """None once the worker may consume; else the exit status (0: told to stop while it
    waited for provisioning; EXIT_SETTINGS: the server has more partitions)."""
    if not await _topology_present(js, settings, stopping):
        return 0
    return None if await _partitions_match(js, settings) else EXIT_SETTINGS


async def _partitions_match(
    js: JetStreamContext, settings: WorkerSettings, then: str = "not consuming"
) -> bool:
    """False, said at ERROR, when the server has more partitions than this worker's count:
    it would never pull the ones beyond it, and their alerts would wait forever. (Fewer:
    `_topology_present` names the missing consumers and waits for provisioning.)"""
    more = await provision.partitions_beyond(js, ALERTS_STREAM, settings.partitions)
    if more is None:
        return True
    log.error(
        "the NATS server has %d partitions (consumers %s/worker-p0..%d) and this worker's "
        "ALERTBRIDGE_PARTITIONS is %d: partitions %d..%d would never be pulled and their "
        "alerts would wait forever. Start it with ALERTBRIDGE_PARTITIONS set to the count "
        "ops provisioned with (%d when checked); %s",
        more, ALERTS_STREAM, more - 1, settings.partitions, settings.partitions, more - 1, more,
        then,
    )  # fmt: skip
    return False


async def _recheck_partitions(
    js: JetStreamContext,
    settings: WorkerSettings,
    stopping: asyncio.Event,
    outgrown: Callable[[], None],
) -> None:
    """While consuming, check every `partition_recheck` seconds that the server has no
    more partitions than this worker's count: if ops provisioned more, the alerts of the
    new ones would wait for ever, so the worker stops (`outgrown`: what it holds is
    finished, then it exits EXIT_SETTINGS, as it would at start). A failed check is
    logged and tried again at the next one."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), settings.partition_recheck)
        if stopping.is_set():
            return
        try:
            match = await _partitions_match(js, settings, "finishing what it holds, then stopping")
        except Exception as exc:  # noqa: BLE001 - a check that fails is tried again
            log.warning("could not check the partition count: %r", exc)
            continue
        if not match:
            outgrown()
            return


def worker_topology(settings: WorkerSettings) -> Topology:
    """The topology as the worker uses it: its streams, and only its own consumers."""
    full = settings.topology()
    own = tuple(c for c in full.consumers if c.stream in WORKER_CONSUMES)
    return msgspec.structs.replace(full, consumers=own)


def main() -> int:
    """Run the worker; exit 2 (EXIT_SETTINGS) on a bad setting."""
    logs.setup("alertbridge-worker")
    try:
        settings = load(WorkerSettings, os.environ)
    except SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    # uvloop: the event loop's own overhead was a fifth of the worker's CPU.
    return run_role(
        "worker",
        lambda providers: serve(settings, spans=providers.records_spans),
        loop_factory=uvloop.new_event_loop,
    )


if __name__ == "__main__":
    sys.exit(main())
