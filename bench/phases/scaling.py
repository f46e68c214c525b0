"""Phase `scaling`: drain rate with 1, 2 and 4 worker processes against a 20 ms HTTP
broker (slow_broker.py via the signed HTTP forwarder), by partition count, and
nats-server's CPU per executed alert. The workers share the partitions
(worker.membership): the rate must not fall as workers are added, nor the server's CPU
per alert grow (it did while every worker pulled from every partition)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from bench.common import log, symbols
from bench.drain import drain, forwarding_env, start_slow_broker
from bench.procs import PROCS

if TYPE_CHECKING:
    from bench.harness import Harness
    from bench.results_worker import DrainResult

# (partitions, symbols): 256 partitions over 1,024 symbols, so that partitions no
# longer bound one worker.
SHAPES = ((64, 64), (256, 1024))
WORKERS = (1, 2, 4)


def run(h: Harness) -> None:
    """Every shape with every worker count, one fresh server each; one broker for all."""
    res: list[DrainResult] = []
    h.results.scaling = res
    broker = start_slow_broker(h, "scaling")
    try:
        for partitions, nsymbols in SHAPES:
            for nworkers in WORKERS:
                res.append(one(h, partitions, nsymbols, nworkers))
                h.save()
    finally:
        PROCS.stop(broker)


def one(h: Harness, partitions: int, nsymbols: int, nworkers: int) -> DrainResult:
    """The drain rate of `nworkers` workers with `partitions` partitions."""
    tag = f"scaling-w{nworkers}-p{partitions}"
    delay_ms = h.opts.broker_delay * 1000
    log(f"scaling: {nworkers} worker(s), {partitions} partitions, broker {delay_ms:.0f} ms")
    with h.running(tag, lambda: forwarding_env(h, partitions)) as started:
        r = drain(h, tag, started.env, symbols(nsymbols), h.opts.scaling_n, nworkers, cpu=None,
                  server_pid=started.nats.pid)  # fmt: skip
    log(f"  nats-server cpu {r.server_cpu_us_per_alert} µs per executed alert")
    return msgspec.structs.replace(r, partitions=partitions, symbols=nsymbols)
