"""The projector's loops: pull each stream into the views, watch the lag, rebuild on request.

It connects as the `projector` role (deploy/nats-server.conf): it can pull from its own
durable consumer on EVENTS and on DLQ and ack them, read the three streams' info (the
lag) and read them by sequence (ALERTS, hole-filling, a rebuild); nothing else. A batch
is folded in in one transaction and acked once that committed. It is a process of its
own and never on the order path: a projector stopped or slow delays the views, never an
order.

Why durable consumers on EVENTS and DLQ (and not an ordered consumer): an ordered
consumer is created by its reader, and a role that may create consumers may name a push
consumer's deliver subject, i.e. make the server write one stream's messages into
another's subjects. Durable consumers are provisioned by the ops role; the projector
only pulls. ALERTS has none for the projector: it is read by sequence (projector.follow
says why).
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
from opentelemetry.metrics import CallbackOptions, Observation

from contracts.subjects import ALERTS_STREAM
from contracts.topology import PROJECTOR
from ops.platform.healthserver import health_server, serve_probes
from ops.platform.lifecycle import stopping_on_signals
from ops.platform.natsconn import connect, jetstream
from ops.platform.projections import STREAMS
from projector.fold import Stored, Writer
from projector.follow import LOOK_EVERY, unread
from projector.rebuild import (
    RebuildError,
    current,
    discard,
    read_range,
    rebuild,
    request_file,
    swap,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from projector.settings import ProjectorSettings

log = logging.getLogger("projector")

BATCH: Final = 512
RETRY: Final = 2.0  # seconds before pulling again after a failed pull


class Projector:
    """The process's state: its writer (swapped by a rebuild) and the streams' lag."""

    def __init__(self, nc: Client, settings: ProjectorSettings) -> None:
        self._nc = nc
        self._js = jetstream(nc, settings)
        self._settings = settings
        self.path = Path(settings.projections_db)
        self.writer = Writer(current(self.path))
        self._folding = asyncio.Lock()  # one batch or one rebuild at a time
        self.lag: dict[str, int] = {}
        self.pulling: set[str] = set()

    async def pull(self, stream: str, stopping: asyncio.Event) -> None:
        """Fold `stream` in, batch by batch, until `stopping`."""
        while not stopping.is_set():
            try:
                sub = await self._js.pull_subscribe_bind(durable=PROJECTOR, stream=stream)
            except NatsError as exc:
                log.error("cannot bind %s/%s (%r): provisioned?", stream, PROJECTOR, exc)
                await _pause(stopping, RETRY)
                continue
            try:
                await self._pull(sub, stream, stopping)
            finally:
                self.pulling.discard(stream)
                with contextlib.suppress(NatsError):
                    await sub.unsubscribe()

    async def _pull(
        self, sub: JetStreamContext.PullSubscription, stream: str, stopping: asyncio.Event
    ) -> None:
        while not stopping.is_set():
            try:
                msgs = await sub.fetch(BATCH, timeout=self._settings.fetch_timeout)
            except TimeoutError:
                self.pulling.add(stream)
                continue
            except NatsError as exc:
                self.pulling.discard(stream)
                log.error(
                    "cannot pull from %s/%s (%r): is it provisioned (`alertbridge provision`)?"
                    " Trying again in %gs", stream, PROJECTOR, exc, RETRY,
                )  # fmt: skip
                await _pause(stopping, RETRY)
                continue
            self.pulling.add(stream)
            batch = sorted(
                (Stored(m.metadata.sequence.stream, m.headers, m.data) for m in msgs),
                key=lambda m: m.seq,
            )
            async with self._folding:
                await self._fold(stream, batch)
            for msg in msgs:  # a lost ack redelivers the message: applied already, a no-op
                await msg.ack()

    async def follow(self, stream: str, stopping: asyncio.Event) -> None:
        """Fold `stream` in by sequence, without a consumer (projector.follow), until
        `stopping`: batch after batch while behind, then a look every LOOK_EVERY."""
        while not stopping.is_set():
            applied = self.writer.applied(stream)
            try:
                state = (await self._js.stream_info(stream)).state
                batch, up_to = await unread(self._nc, self._settings.nats_js_api, stream,
                                            applied, state.first_seq, state.last_seq)  # fmt: skip
            except (NatsError, TimeoutError, RebuildError) as exc:
                self.pulling.discard(stream)
                log.error("cannot read %s by sequence (%r): trying again in %gs",
                          stream, exc, RETRY)  # fmt: skip
                await _pause(stopping, RETRY)
                continue
            self.pulling.add(stream)
            if up_to > applied:
                async with self._folding:
                    self.writer.apply(stream, batch, up_to=up_to)
            if up_to >= state.last_seq or not batch:
                await _pause(stopping, LOOK_EVERY)

    async def _fold(self, stream: str, batch: list[Stored]) -> None:
        """Fold a batch in, in stream order. A consumer redelivers an unacked message
        (one a killed projector had fetched) after later ones: the applied mark is a high
        water mark, so the messages it would jump over are read by sequence first."""
        done = self.writer.applied(stream)
        fresh = {m.seq for m in batch if m.seq > done}
        if fresh and len(fresh) != max(fresh) - done:  # a hole before or inside the batch
            seq, last = done + 1, max(fresh)
            while seq <= last:
                found = await read_range(self._nc, self._settings.nats_js_api, stream, seq, last)
                if not found:
                    break
                self.writer.apply(stream, found)
                seq = found[-1].seq + 1
        self.writer.apply(stream, batch)

    async def watch(self, stopping: asyncio.Event) -> None:
        """Read the streams' last sequences (the lag); rebuild when asked to."""
        while not stopping.is_set():
            await self._read_lag()
            if request_file(self.path).exists():
                await self.rebuild()
            await _pause(stopping, self._settings.lag_interval)

    async def _read_lag(self) -> None:
        now = round(time.time() * 1_000_000)
        for stream in STREAMS:
            try:
                last = (await self._js.stream_info(stream)).state.last_seq
            except (NatsError, TimeoutError) as exc:
                log.warning("cannot read %s's last sequence: %r", stream, exc)
                continue
            async with self._folding:
                self.writer.stream_last(stream, last, now)
                self.lag[stream] = max(last - self.writer.applied(stream), 0)

    async def rebuild(self) -> None:
        """Fold the streams into a new generation up to what is applied now; swap it in."""
        request = request_file(self.path)
        failed = request.with_name(request.name + ".failed")
        async with self._folding:
            up_to = {stream: self.writer.applied(stream) for stream in STREAMS}
            log.info("rebuilding the projections up to %s", up_to)
            try:
                generation = await rebuild(self._nc, self._settings.nats_js_api, self.path, up_to)
            except (RebuildError, NatsError) as exc:
                log.error("rebuild failed, the current views stay: %s", exc)
                failed.write_text(f"{exc}\n", encoding="utf-8")
                request.unlink(missing_ok=True)
                return
            self.writer.close()
            before = swap(self.path, generation)
            self.writer = Writer(generation)
        if before is not None and before != generation:
            discard(before)
        failed.unlink(missing_ok=True)
        request.unlink(missing_ok=True)
        log.info("rebuilt the projections into %s", generation.name)

    def observe_lag(self, _: CallbackOptions) -> Iterable[Observation]:
        """The `alertbridge.projector.lag` gauge: messages stored and not folded in yet."""
        return [Observation(lag, {"stream": stream}) for stream, lag in self.lag.items()]

    async def problems(self) -> list[str]:
        """What keeps the projector from being ready (empty: ready)."""
        found = [] if self._nc.is_connected else ["NATS disconnected"]
        return found + [f"not pulling {s}" for s in STREAMS if s not in self.pulling]


async def serve(settings: ProjectorSettings) -> None:
    """Run until SIGTERM/SIGINT; then stop pulling, finish the batch under way, drain."""
    nc = await connect(settings, name="alertbridge-projector")
    projector = Projector(nc, settings)
    metrics.get_meter("alertbridge.projector").create_observable_gauge(
        "alertbridge.projector.lag",
        callbacks=[projector.observe_lag],
        unit="{message}",
        description="messages stored on a stream and not folded into the views yet",
    )
    stopping = stopping_on_signals()
    tasks = [
        asyncio.create_task(
            projector.follow(s, stopping) if s == ALERTS_STREAM else projector.pull(s, stopping)
        )
        for s in STREAMS
    ]
    tasks.append(asyncio.create_task(projector.watch(stopping)))
    health = probes = None
    if settings.health_port:  # not among `tasks`: its end (a port taken) ends nothing else
        health = health_server(projector.problems, settings.health_host, settings.health_port)
        probes = asyncio.create_task(serve_probes(health, settings.health_port, "projector"))
    log.info("projector running: %s, applied %s", projector.path,
             {s: projector.writer.applied(s) for s in STREAMS})  # fmt: skip
    try:
        done, _ = await asyncio.wait(
            [asyncio.create_task(stopping.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
    finally:
        stopping.set()
        if health is not None:
            health.should_exit = True
        log.info("projector stopping")
        ending = [*tasks, probes] if probes is not None else tasks
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*ending, return_exceptions=True), 5)
        await nc.drain()
        projector.writer.close()
        log.info("projector stopped")


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()
