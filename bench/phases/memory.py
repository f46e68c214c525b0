"""Phase `memory`: RSS of the ingress and the worker at rest, and after N alerts."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bench.common import SYMBOLS_64, log
from bench.results import Memory, MemSample, RssSet
from bench.streams import settle
from bench.system import rss

if TYPE_CHECKING:
    from bench.harness import Harness, Running

CHUNK = 100_000  # alerts per loadgen run: the time bound holds whatever the rate


def _rss_set(started: Running) -> RssSet:
    return RssSet(
        ingress=rss(started.the_ingress().pid),
        worker=rss(started.workers[0].pid),
        nats=rss(started.nats.pid),
    )


def run(h: Harness) -> None:
    """Up to `--mem-alerts` alerts within `--mem-max-seconds`, one worker executing."""
    o = h.opts
    with h.running("memory", lambda: h.ab_env(ALERTBRIDGE_MAX_ALERT_AGE="0")) as started:
        started.workers += h.start_workers("memory", 1, started.env, cpu=1)
        h.smoke()
        time.sleep(5)
        res = Memory(at_rest=_rss_set(started))
        h.results.memory = res
        log(
            f"memory: at rest ingress {res.at_rest.ingress.vm_rss} KiB, "
            f"worker {res.at_rest.worker.vm_rss} KiB; sending up to {o.mem_alerts} "
            f"alerts for at most {o.mem_max_seconds} s"
        )
        t0 = time.monotonic()
        samples = load(h, started, t0)
        load_s = time.monotonic() - t0
        streams = h.streams
        stored = settle(streams.stored) - 1
        drained = streams.wait_executed(stored + 1, o.mem_drain_seconds)
        time.sleep(3)
        res.alerts_sent = samples[-1].sent if samples else 0
        res.alerts_stored = stored
        res.load_seconds = round(load_s, 1)
        res.all_executed = drained
        res.executed = streams.executed_count()
        res.samples = samples
        res.after = _rss_set(started)
        log(
            f"  after {stored} alerts: ingress {res.after.ingress} worker "
            f"{res.after.worker} (executed {res.executed}, all: {drained})"
        )


def load(h: Harness, started: Running, t0: float) -> list[MemSample]:
    """Alerts in chunks until `--mem-alerts` or `--mem-max-seconds`; a sample after each."""
    o = h.opts
    sent = 0
    samples: list[MemSample] = []
    while sent < o.mem_alerts and time.monotonic() - t0 < o.mem_max_seconds:
        left_s = max(1.0, o.mem_max_seconds - (time.monotonic() - t0))
        lg = h.fill(min(CHUNK, o.mem_alerts - sent), SYMBOLS_64, "--max-seconds", str(left_s))
        sent += lg.sent
        sample = MemSample(
            sent=sent,
            t=round(time.monotonic() - t0, 1),
            ingress_rss_kib=rss(started.the_ingress().pid).vm_rss,
            worker_rss_kib=rss(started.workers[0].pid).vm_rss,
            executed=h.streams.executed_count(),
        )
        samples.append(sample)
        log(f"  {sample}")
    return samples
