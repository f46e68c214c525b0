"""Phase `worker`: end-to-end latency at a steady rate (through the ingress, and
published straight into ALERTS), and the drain rate with the paper broker."""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import msgspec

from bench import tools
from bench.common import AB_SECRET, SYMBOLS_64, log
from bench.drain import drain
from bench.natsq import PublishResult
from bench.procs import PROCS
from bench.results_worker import E2E, DrainResult, WorkerLevel, WorkerPhase
from bench.system import HZ, ticks
from bench.table_worker import JUDGED_LEVEL

if TYPE_CHECKING:
    from bench.harness import Harness, Running
    from bench.procs import Popen


def run(h: Harness) -> None:
    """At each fsync level (`--durability`, one-second first): end-to-end latency through
    the ingress (`--e2e-runs` consecutive runs at the one-second level, where the tail is
    judged; one at `always`, reported), the
    worker alone (first level only), the drain rates with the paper broker, and the
    same backlog drained by the floor under the worker (bench.stripped_worker)."""
    res = WorkerPhase()
    h.results.worker = res
    o = h.opts
    for n, sync in enumerate(o.levels()):
        level = res.levels[sync] = WorkerLevel(sync=sync)
        env = functools.partial(h.ab_env, ALERTBRIDGE_MAX_ALERT_AGE="0")
        with h.running(f"worker-{sync}", env, sync=sync) as started:
            worker = h.start_workers(f"worker-{sync}", 1, started.env, cpu=1)[0]
            started.workers.append(worker)
            # warm up the path (and the paper book) before measuring
            tools.loadgen("paced", o.ab_port, AB_SECRET, "--rate", "500", "--duration", "3",
                          "--conns", "32", "--symbols", SYMBOLS_64)  # fmt: skip
            h.streams.wait_executed(h.streams.stored(), 60)
            for _ in range(o.e2e_runs if sync == JUDGED_LEVEL else 1):
                level.e2e_runs.append(e2e_via_ingress(h, worker, sync))
                h.save()
            if n == 0:
                # the same rates offered to the worker alone: alerts published straight
                # into ALERTS, publisher on CPU 0
                res.e2e_sweep = [e2e_direct(h, worker, r, o.e2e_sweep_seconds) for r in o.e2e_sweep]
                res.e2e_direct = e2e_direct(h, worker, o.e2e_rate, o.e2e_seconds)
                h.save()
            # drain rate, paper broker: fill a backlog with the worker stopped
            level.paper_64_symbols = paper_drain(h, started, f"paper_64_symbols_{sync}",
                                                 SYMBOLS_64, o.drain_n)  # fmt: skip
            h.save()
            level.paper_1_symbol = paper_drain(h, started, f"paper_1_symbol_{sync}", "BTCUSDT",
                                               o.drain_n_single)  # fmt: skip
            h.save()
            level.stripped_64_symbols = drain(h, f"stripped_64_symbols_{sync}", started.env,
                                              SYMBOLS_64, o.drain_n, 1, cpu=1,
                                              server_pid=started.nats.pid,
                                              module="bench.stripped_worker")  # fmt: skip
            h.save()


def paper_drain(h: Harness, started: Running, label: str, symbols: str, n: int) -> DrainResult:
    """The running workers stopped, then the drain rate of one on CPU 1 (and nats-server's
    CPU per executed alert meanwhile)."""
    for w in started.workers:
        PROCS.stop(w)
    started.workers.clear()
    return drain(h, label, started.env, symbols, n, 1, cpu=1, server_pid=started.nats.pid)


def e2e_via_ingress(h: Harness, worker: Popen, sync: str) -> E2E:
    """(a) end-to-end latency at a steady `--e2e-rate`, 64 symbols, through the ingress.

    The load generator runs on CPU 0 beside the ingress and nats-server (together
    about 80 % of it at this rate) so that the worker has CPU 1 to itself: the latency
    counts from the ingress's receipt, so it is the worker's and NATS's.
    """
    o, streams = h.opts, h.streams
    since = streams.next_event_seq()
    pre = h.quiet()
    w0, t0 = ticks(worker.pid), time.monotonic()
    lg = tools.loadgen("paced", o.ab_port, AB_SECRET, "--rate", str(o.e2e_rate),
                       "--duration", str(o.e2e_seconds), "--conns", "32",
                       "--symbols", SYMBOLS_64, cpu=0)  # fmt: skip
    backlog = streams.pending()
    w1, t1 = ticks(worker.pid), time.monotonic()
    done = streams.wait_executed(streams.stored(), 120)
    ev = streams.executed(since, 0.05)
    out = E2E(
        **msgspec.structs.asdict(ev),
        rate=o.e2e_rate,
        seconds=o.e2e_seconds,
        load=lg,
        backlog_at_end_of_load=backlog,
        all_executed=done,
        worker_cpu_pct=round(100 * (w1 - w0) / HZ / (t1 - t0)),
        pre_busy_pct=pre,
    )
    log(
        f"  e2e @ {o.e2e_rate}/s, sync {sync}: p50 {out.latency_p50_ms} ms p99 "
        f"{out.latency_p99_ms} ms max {out.latency_max_ms} ms, backlog {backlog.num_pending}, "
        f"worker cpu {out.worker_cpu_pct}%"
    )
    return out


def e2e_direct(h: Harness, worker: Popen, rate: int, seconds: int) -> E2E:
    """Latency at `rate` alerts/s published straight into ALERTS (natsq.py on CPU 0)."""
    streams = h.streams
    since = streams.next_event_seq()
    target = streams.stored() + int(rate * seconds)
    pre = h.quiet()
    w0, t0 = ticks(worker.pid), time.monotonic()
    pub = tools.natsq_cli(streams.url, 0, seconds * 3 + 30,
                          ["publish", str(rate), str(seconds)], PublishResult)  # fmt: skip
    backlog = streams.pending()
    w1, t1 = ticks(worker.pid), time.monotonic()
    done = streams.wait_executed(target, 120)
    ev = streams.executed(since, 0.05)
    out = E2E(
        **msgspec.structs.asdict(ev),
        rate=rate,
        seconds=seconds,
        publish=pub,
        backlog_at_end_of_load=backlog,
        all_executed=done,
        pre_busy_pct=pre,
        worker_cpu_pct=round(100 * (w1 - w0) / HZ / (t1 - t0)),
    )
    log(
        f"  e2e direct @ {pub.achieved_rate}/s: p50 {out.latency_p50_ms} ms p99 "
        f"{out.latency_p99_ms} ms, worker cpu {out.worker_cpu_pct}%, backlog "
        f"{backlog.num_pending}"
    )
    return out
