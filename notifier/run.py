"""The notifier's loops: take events in, keep time, watch the DLQ, send what is owed.

It connects as the `notifier` role (deploy/nats-server.conf): it can pull from its own
durable consumer on EVENTS and ack it, and read the DLQ's depth; nothing else. A batch
of events is taken in in one store transaction and acked once it committed. It is a
process of its own: a notifier that is slow, down or stuck on a target never holds an
order up, it only delays notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nats.errors import Error as NatsError
from opentelemetry import metrics

from contracts.subjects import DLQ_STREAM, EVENTS_STREAM
from contracts.topology import NOTIFIER
from notifier.health import Health
from notifier.service import Notifier
from notifier.store import Store
from ops.platform.healthserver import health_server, serve_probes
from ops.platform.lifecycle import stopping_on_signals
from ops.platform.natsconn import connect, jetstream

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from notifier.settings import NotifierSettings
    from ops.platform.notify_settings import NotifyTargets

log = logging.getLogger("notifier")

BATCH: Final = 64
TICK: Final = 0.5  # seconds between looks at the clock (folds due, brokers down)
RETRY: Final = 2.0  # seconds before pulling again after a failed pull
# A redelivered event comes at the first pull after its ack wait: an hour of `done`
# covers it. Pruning waits for a minute of this run, so that a notifier restarted after
# a long stop first sees the redeliveries of what its predecessor took in and never acked.
DONE_KEPT: Final = 3_600.0
PRUNE_AFTER: Final = 60.0


class Loops:
    """The notifier process's tasks around one `Notifier`."""

    def __init__(self, js: JetStreamContext, notifier: Notifier, store: Store) -> None:
        self._js = js
        self._notifier = notifier
        self._store = store
        self._caught_up = False  # the last pull found nothing more to read
        self._started = time.monotonic()
        # What /readyz reads (notifier.health): why the last pull failed (None: it did
        # not), and how many messages each target is owed, as of the last tick.
        self.pull_error: NatsError | None = None
        self.owing: dict[str, int] = {}

    async def take_in(self, stopping: asyncio.Event, fetch_timeout: float) -> None:
        """Pull events, take each batch in, ack it, until `stopping`."""
        sub = await self._js.pull_subscribe_bind(durable=NOTIFIER, stream=EVENTS_STREAM)
        try:
            await self._pull(sub, stopping, fetch_timeout)
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def _pull(
        self, sub: JetStreamContext.PullSubscription, stopping: asyncio.Event, fetch_timeout: float
    ) -> None:
        while not stopping.is_set():
            try:
                msgs = await sub.fetch(BATCH, timeout=fetch_timeout)
            except TimeoutError:
                msgs = []
            except NatsError as exc:
                self.pull_error = exc
                log.error(
                    "cannot pull from %s/%s (%r): is it provisioned (`alertbridge provision`)?"
                    " Trying again in %gs",
                    EVENTS_STREAM,
                    NOTIFIER,
                    exc,
                    RETRY,
                )
                await _pause(stopping, RETRY)
                continue
            self.pull_error = None
            if not msgs:  # the request expired with nothing to read
                self._caught_up = True
                continue
            now = time.time()
            with self._store.tx():
                for msg in msgs:
                    self._notifier.take_in(msg.metadata.sequence.stream, msg.data, now)
            for msg in msgs:  # a lost ack redelivers the event: taken in already, a no-op
                await msg.ack()
            self._caught_up = msgs[-1].metadata.num_pending == 0

    async def keep_time(self, stopping: asyncio.Event) -> None:
        """Every TICK: fold summaries due, brokers down for long enough; prune `done`."""
        pruned = 0.0
        while not stopping.is_set():
            now = time.time()
            with self._store.tx():
                self._notifier.tick(now, self._caught_up)
                if time.monotonic() - self._started > PRUNE_AFTER and now - pruned > PRUNE_AFTER:
                    self._store.prune_done(now - DONE_KEPT)
                    pruned = now
            self.owing = self._store.owed_by_target()
            await _pause(stopping, TICK)

    async def watch_dlq(self, stopping: asyncio.Event, every: float) -> None:
        """Read the DLQ's depth every `every` seconds."""
        if not self._notifier.watches_dlq:
            await stopping.wait()
            return
        while not stopping.is_set():
            try:
                depth = (await self._js.stream_info(DLQ_STREAM)).state.messages
            except (NatsError, TimeoutError) as exc:
                log.warning("cannot read the DLQ's depth: %r", exc)
            else:
                with self._store.tx():
                    self._notifier.dlq_depth(depth, time.time())
            await _pause(stopping, every)

    async def send(self, stopping: asyncio.Event) -> None:
        """Send what is owed, as soon as it is owed and again as retries come due."""
        while not stopping.is_set():
            await self._notifier.send_due(time.time())
            self._notifier.owed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK):
                    await self._notifier.owed.wait()


async def serve(settings: NotifierSettings, targets: NotifyTargets) -> None:
    """Run until SIGTERM/SIGINT; then stop pulling, finish the send under way, drain.

    /healthz, /readyz and /metrics on ALERTBRIDGE_HEALTH_PORT when set (notifier.health).
    """
    store = Store(Path(settings.notifier_db))
    notifier = Notifier(store, targets)
    nc = await connect(settings, name="alertbridge-notifier")
    js = jetstream(nc, settings)
    loops = Loops(js, notifier, store)
    health = Health(nc, js, loops, store, targets, settings.target_down_after)
    metrics.get_meter("alertbridge.notifier").create_observable_gauge(
        "alertbridge.notifier.owed",
        callbacks=[health.observe_owed],
        unit="{message}",
        description="messages a target is owed and has not taken yet",
    )
    stopping = stopping_on_signals()
    tasks = [
        asyncio.create_task(loops.take_in(stopping, settings.fetch_timeout)),
        asyncio.create_task(loops.keep_time(stopping)),
        asyncio.create_task(loops.watch_dlq(stopping, settings.dlq_poll_interval)),
        asyncio.create_task(loops.send(stopping)),
    ]
    server = None
    if settings.health_port:  # not among `tasks`: a port it cannot bind stops nothing
        server = health_server(health.problems, settings.health_host, settings.health_port)
        probes = asyncio.create_task(serve_probes(server, settings.health_port, "notifier"))
    log.info(
        "notifier running: %d target(s), %d message(s) owed from before",
        len(targets.all()),
        store.owed(),
    )
    try:
        done, _ = await asyncio.wait(
            [asyncio.create_task(stopping.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
    finally:
        stopping.set()
        log.info("notifier stopping")
        if server is not None:
            server.should_exit = True
            tasks.append(probes)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        await nc.drain()
        store.close()
        log.info("notifier stopped")


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()
