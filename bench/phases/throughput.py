"""Phase `throughput`: wrk + load/alerts.lua against the reference (through its own
run-seed-ref.sh) and alertbridge, alternating, one fresh server lifetime per round."""

from __future__ import annotations

import csv
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from bench import tools
from bench.common import AB_SECRET, HERE, BenchError, log
from bench.procs import spawn
from bench.results import AbRound, RefRound, Throughput
from bench.streams import settle
from bench.system import HZ, CpuDelta, calib_ms, cpu_delta, cpu_snap, loadavg, ticks

if TYPE_CHECKING:
    from bench.harness import Harness, Running
    from bench.natsq import IdCheck
    from bench.tools import WrkResult


def run(h: Harness) -> None:
    """`--reps` rounds: the reference, alertbridge, then each `--variant` of it."""
    res = Throughput(variants={label: [] for label in h.opts.variants})
    h.results.throughput = res
    reps = h.opts.reps
    for i in range(1, reps + 1):
        log(f"throughput round {i}/{reps}: reference (run-seed-ref.sh --reps 1)")
        res.reference.append(ref_round(h, i))
        h.save()
        log(f"throughput round {i}/{reps}: alertbridge")
        res.alertbridge.append(ab_round(h, i))
        h.save()
        for label, extra in h.opts.variants.items():
            log(f"throughput round {i}/{reps}: alertbridge[{label}] {extra}")
            res.variants[label].append(ab_round(h, i, label, extra))
            h.save()
    res.finish()


def ref_round(h: Harness, i: int) -> RefRound:
    """One round of the reference, by run-seed-ref.sh itself."""
    o, out = h.opts, h.out / f"ref-round{i}"
    argv = [str(o.ref_dir / "run-seed-ref.sh"), f"--{o.ref_mode}", "--reps", "1",
            "--duration", f"{o.duration}s", "--warmup", f"{o.warmup}s", "--conns", str(o.conns),
            "--port", str(o.ref_port), "--redis-port", str(o.redis_port),
            "--quiet-wait", str(o.quiet_wait), "--quiet-pct", str(o.quiet_pct),
            "--out", str(out)]  # fmt: skip
    with (h.out / f"ref-round{i}.log").open("wb") as fh:
        fh.write(("# " + " ".join(shlex.quote(x) for x in argv) + "\n").encode())
        fh.flush()
        proc = spawn(argv, stdout=fh)
        try:
            proc.wait(timeout=4 * o.quiet_wait + 300)
        except subprocess.TimeoutExpired:
            proc.terminate()  # its trap stops redis, node and wrk by PID
            proc.wait(30)
            raise BenchError(f"run-seed-ref.sh did not finish; see ref-round{i}.log") from None
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    tsvs = sorted(out.glob("*/results.tsv"))
    if not tsvs:
        raise BenchError(f"run-seed-ref.sh left no results.tsv; see ref-round{i}.log")
    with tsvs[-1].open() as fh:
        row: dict[str, object] = dict(next(csv.DictReader(fh, delimiter="\t")))
    row["store_cpu_pct"] = row.pop("redis_cpu_pct", None)
    row["stored"] = row.pop("llen_alerts", None)
    row.update(rc=proc.returncode, run_dir=str(tsvs[-1].parent))
    try:
        ref = msgspec.convert(row, RefRound)
    except msgspec.ValidationError as exc:
        raise BenchError(f"{tsvs[-1]}: not the columns expected: {exc}") from None
    log(
        f"  reference: {ref.rps} req/s p50 {ref.p50_ms} ms p99 {ref.p99_ms} ms "
        f"stored {ref.stored} fresh {ref.fresh_acks} -> {ref.check} "
        f"(noise: {ref.noise}, other cpu {ref.other_cpu_pct}%)"
    )
    return ref


@dataclass(frozen=True)
class _Measured:
    """One measured wrk run against alertbridge, and what it cost."""

    wrk: WrkResult
    wrk_cpu_s: float
    app_ticks: int  # the ingress's
    store_ticks: int  # nats-server's
    cpus: CpuDelta
    seconds: float
    stored: int
    ids: IdCheck
    pre_busy: int
    calib: int


def ab_round(h: Harness, i: int, variant: str = "", extra: dict[str, str] | None = None) -> AbRound:
    """One round of alertbridge (with `extra` environment for a variant)."""
    tag = f"ab{'-' + variant if variant else ''}-round{i}"
    with h.running(tag, lambda: h.ab_env(**(extra or {}))) as started:
        h.smoke()
        m = _measure(h, started, tag)
    row = _row(h, i, m)
    log(
        f"  alertbridge: {row.rps:.0f} req/s p50 {row.p50_ms} ms p99 {row.p99_ms} ms "
        f"stored {row.stored} fresh {row.fresh_acks} sent {row.sent_unique} doubled "
        f"{row.doubled} -> {row.check} (noise: {row.noise}, other cpu {row.other_cpu_pct}%)"
    )
    return row


def _measure(h: Harness, started: Running, tag: str) -> _Measured:
    nats_p, ing = started.nats, started.the_ingress()
    env = {"SECRET": AB_SECRET, "BENCH_ALERTS_LUA": str(h.lua)}
    script, conns = HERE / "alerts-ab.lua", h.opts.conns
    if h.opts.warmup > 0:
        pre = h.quiet()
        log(f"  machine busy before warm-up: {pre}% | warm-up wrk {h.opts.warmup}s")
        tools.wrk(h.webhook, h.opts.warmup, conns, env, script,
                  h.out / f"{tag}.warmup.wrk.txt", latency=False)  # fmt: skip
    streams = h.streams
    settle(streams.stored)
    time.sleep(1)
    pre_busy = h.quiet()
    calib = calib_ms(0)
    count0 = streams.stored()
    n0, r0, s0, t0 = ticks(ing.pid), ticks(nats_p.pid), cpu_snap(), time.monotonic()
    wrk, wrk_cpu = tools.wrk(
        h.webhook, h.opts.duration, conns, env, script, h.out / f"{tag}.wrk.txt"
    )
    n1, r1, s1, t1 = ticks(ing.pid), ticks(nats_p.pid), cpu_snap(), time.monotonic()
    stored = settle(streams.stored) - count0
    return _Measured(wrk=wrk, wrk_cpu_s=wrk_cpu, app_ticks=n1 - n0, store_ticks=r1 - r0,
                     cpus=cpu_delta(s0, s1), seconds=t1 - t0, stored=stored,
                     ids=streams.ids("ALERTS"), pre_busy=pre_busy, calib=calib)  # fmt: skip


def _check(h: Harness, m: _Measured) -> str:
    """OK when every fresh 200 is stored and nothing was stored twice."""
    f, ids = m.wrk, m.ids
    check = "OK"
    if not (f.fresh <= m.stored <= f.sent_unique) or m.stored - f.fresh > h.opts.conns:
        check = "FAIL"
    if ids.doubled or ids.unique_ids != ids.messages:
        check = "FAIL(doubled)"
    if f.non2xx:
        check += "(non2xx)"
    return check


def _row(h: Harness, i: int, m: _Measured) -> AbRound:
    f, d, el = m.wrk, m.cpus, m.seconds
    app_cpu = 100 * m.app_ticks / HZ / el
    store_cpu = 100 * m.store_ticks / HZ / el
    other = max(
        0.0, (d.busy_ticks - m.app_ticks - m.store_ticks - m.wrk_cpu_s * HZ) / HZ / el * 100
    )
    noisy = d.steal_pct > 5 or other > 10 or m.pre_busy > h.opts.quiet_pct
    srv_us = round((m.app_ticks + m.store_ticks) / HZ * 1e6 / f.requests) if f.requests else None
    return AbRound(
        rep=i,
        rps=f.rps,
        p50_ms=f.p50_us / 1000,
        p90_ms=f.p90_us / 1000,
        p99_ms=f.p99_us / 1000,
        max_ms=f.max_us / 1000,
        non2xx=f.non2xx,
        requests=f.requests,
        fresh_acks=f.fresh,
        dupe_acks=f.dupe,
        sent_unique=f.sent_unique,
        stored=m.stored,
        stream_messages=m.ids.messages,
        stream_unique_ids=m.ids.unique_ids,
        doubled=m.ids.doubled,
        inflight_at_cutoff=m.stored - f.fresh,
        check=_check(h, m),
        app_cpu_pct=round(app_cpu),
        store_cpu_pct=round(store_cpu),
        wrk_cpu_pct=round(100 * m.wrk_cpu_s / el),
        other_cpu_pct=round(other),
        cpu0_busy_pct=d.busy_pct.get("cpu0", 0),
        cpu1_busy_pct=d.busy_pct.get("cpu1", 0),
        steal_pct=d.steal_pct,
        pre_run_busy_pct=m.pre_busy,
        calib_ms=m.calib,
        srv_cpu_us_per_req=srv_us,
        noise="noisy" if noisy else "ok",
        loadavg=loadavg(),
    )
