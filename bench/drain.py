"""Drain rate (worker and scaling phases) and the 20 ms HTTP broker (scaling and profile):
fill a backlog with no worker running, then time workers working it off."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from bench.common import HERE, PY, BenchError, log
from bench.procs import PROCS, listening, wait_listening
from bench.results_worker import DrainResult
from bench.streams import settle
from bench.system import HZ, TickSampler, cpu_delta, cpu_snap, ours_ticks, ticks

if TYPE_CHECKING:
    from bench.harness import Harness
    from bench.natsq import ExecutedStats
    from bench.procs import Popen


def drain(
    h: Harness,
    label: str,
    env: dict[str, str],
    symbols: str,
    n: int,
    nworkers: int,
    cpu: int | None,
    server_pid: int | None = None,
    module: str = "worker",
) -> DrainResult:
    """Fill n alerts through the ingress (no worker running), then time `nworkers`
    (`python -m <module>`); with `server_pid`, also nats-server's CPU per executed alert
    while they drain."""
    streams = h.streams
    before = streams.executed_count()
    stored0 = streams.stored()
    since = streams.next_event_seq()
    fill = h.fill(n, symbols)
    stored = settle(streams.stored) - stored0
    pre = h.quiet()
    t0 = time.monotonic()
    server0 = ticks(server_pid) if server_pid else 0
    workers = h.spawn_workers(f"drain-{label}", nworkers, env, cpu=cpu, module=module)
    with (  # sampled from their start: the drain begins before check_workers returns
        TickSampler([w.pid for w in workers]) as worker_cpu,
        TickSampler([server_pid] if server_pid else []) as server_cpu,
    ):
        h.check_workers(f"drain-{label}", workers)
        ours0, s0, m0 = ours_ticks(), cpu_snap(), time.monotonic()
        done = streams.wait_executed(before + stored, h.opts.drain_max_seconds)
        ours1, s1, m1 = ours_ticks(), cpu_snap(), time.monotonic()
        tk1 = sum(ticks(w.pid) for w in workers if w.poll() is None)
        server1 = ticks(server_pid) if server_pid else 0
    wall = time.monotonic() - t0
    busy = cpu_delta(s0, s1).busy_ticks
    other = max(0.0, (busy - (ours1 - ours0)) / HZ / max(m1 - m0, 1e-9) * 100)
    for w in workers:
        PROCS.stop(w)
    ev = streams.executed(since, 0.0)
    out = DrainResult(
        label=label,
        workers=nworkers,
        alerts=stored,
        fill_rps=fill.achieved_rps,
        all_executed=done,
        wall_s=round(wall, 2),
        pre_busy_pct=pre,
        other_cpu_pct=round(other),
        noise="noisy" if other > 10 else "ok",
        worker_cpu_pct_sum=round(100 * tk1 / HZ / max(wall, 1e-9)),
        executed=ev.executed,
        rate_per_s=ev.rate_per_s,
        rate_mid80_per_s=ev.rate_mid80_per_s,
        server_cpu_us_per_alert=(
            round(1e6 * (server1 - server0) / HZ / max(ev.executed or 0, 1)) if server_pid else None
        ),
        worker_cpu_us_per_alert=_steady_us(worker_cpu, ev),
        server_steady_cpu_us_per_alert=_steady_us(server_cpu, ev) if server_pid else None,
    )
    log(
        f"  drain {label} x{nworkers}: {out.executed} executed, {out.rate_mid80_per_s}/s "
        f"(middle 80 %), all executed: {done}; worker cpu {out.worker_cpu_pct_sum}% "
        f"({out.worker_cpu_us_per_alert} µs per executed alert in the middle 80 %), nats-server "
        f"{out.server_steady_cpu_us_per_alert or '-'} µs per alert (middle 80 %), other load "
        f"{out.other_cpu_pct}% of a core"
    )
    return out


def _steady_us(sampler: TickSampler, ev: ExecutedStats) -> int | None:
    """CPU µs per executed alert over the middle 80 % of the completions (start-up and
    tail excluded): the CPU spent in that window over the alerts completed in it."""
    if ev.mid80_from is None or ev.mid80_to is None or not ev.rate_mid80_per_s:
        return None
    window = ev.mid80_to - ev.mid80_from
    spent = sampler.between(ev.mid80_from, ev.mid80_to)
    if spent is None or window <= 0:
        return None
    return round(1e6 * spent / (ev.rate_mid80_per_s * window))


def forwarding_env(h: Harness, partitions: int) -> dict[str, str]:
    """alertbridge's environment with one account on the signed HTTP forwarder."""
    accounts = h.tmp / "accounts-bench.toml"
    accounts.write_text(
        '[accounts.default]\nbroker = "http"\n'
        f'http = {{ url = "http://127.0.0.1:{h.opts.broker_port}/orders", '
        'secret_env = "BENCH_FORWARD_SECRET" }\n'
    )
    return h.ab_env(
        ALERTBRIDGE_MAX_ALERT_AGE="0",
        ALERTBRIDGE_CONFIG=str(accounts),
        BENCH_FORWARD_SECRET="bench-forward-secret",  # noqa: S106 (a throwaway bench secret)
        ALERTBRIDGE_PARTITIONS=str(partitions),
    )


def start_slow_broker(h: Harness, tag: str) -> Popen:
    """slow_broker.py on CPU 1: 200 after --broker-delay, for the HTTP forwarder."""
    port = h.opts.broker_port
    argv = [PY, str(HERE / "slow_broker.py"), "--port", str(port),
            "--delay", str(h.opts.broker_delay)]  # fmt: skip
    if listening(port):
        raise BenchError(f"127.0.0.1:{port} is taken (a leftover broker?)")
    log_to = h.out / f"{tag}.broker.log"
    broker = PROCS.start("slow-broker", argv, env=dict(os.environ), log_to=log_to, cpu=1)
    wait_listening(port, broker, "slow broker")
    return broker
