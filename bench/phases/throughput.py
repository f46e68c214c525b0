"""Phase `throughput`: wrk + load/alerts.lua against the reference (through its own
run-seed-ref.sh) and alertbridge, alternating, one fresh server lifetime per round.

Each comparison is at equal durability (issue 19): Redis `appendfsync everysec`
against nats-server `sync_interval: 1s`, and `always` against `always`. Each round
also serves the stripped webhook (bench.stripped: the floor under the ingress) and
measures nats-server's own ceiling of fsynced publishes (`natsq.py fill`, 64 in
flight), so that every ratio is one of figures taken in the same minutes."""

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
from bench.results import AbRound, Ceiling, RefRound, Throughput
from bench.streams import settle
from bench.system import HZ, CpuDelta, calib_ms, cpu_delta, cpu_snap, loadavg, ticks

if TYPE_CHECKING:
    from pathlib import Path

    from bench.harness import Harness, Running
    from bench.natsq import IdCheck
    from bench.tools import WrkResult


# nats-server's fsync policy -> the reference's Redis mode at the same durability.
REF_MODE = {"1s": "durable", "always": "fsync"}


def run(h: Harness) -> None:
    """`--reps` rounds; in each, per durability level the reference then alertbridge,
    then the stripped webhook, nats-server's fsync ceiling, and each `--variant`."""
    res = Throughput(variants={label: [] for label in h.opts.variants})
    h.results.throughput = res
    reps, levels = h.opts.reps, h.opts.levels()
    for i in range(1, reps + 1):
        for level in levels:
            refs, abs_ = (
                (res.reference, res.alertbridge)
                if level == "1s"
                else (res.reference_fsync, res.alertbridge_fsync)
            )
            mode = REF_MODE[level] if h.opts.ref_mode == "durable" else h.opts.ref_mode
            log(f"throughput round {i}/{reps}: reference, Redis {mode} (run-seed-ref.sh)")
            refs.append(ref_round(h, i, mode))
            h.save()
            log(f"throughput round {i}/{reps}: alertbridge, nats-server sync {level}")
            abs_.append(ab_round(h, i, f"sync-{level}", sync=level))
            h.save()
        log(f"throughput round {i}/{reps}: the stripped webhook (bench.stripped), sync 1s")
        res.stripped.append(ab_round(h, i, "stripped", sync="1s", module="bench.stripped"))
        h.save()
        log(f"throughput round {i}/{reps}: nats-server alone, fsync always, 64 in flight")
        res.ceiling.append(ceiling(h, i))
        h.save()
        if "always" in levels:
            log(f"throughput round {i}/{reps}: the same, the client on nats-server's CPU")
            res.ceiling_shared.append(ceiling(h, i, cpu=0))
            h.save()
        for label, extra in h.opts.variants.items():
            log(f"throughput round {i}/{reps}: alertbridge[{label}] {extra}")
            res.variants[label].append(ab_round(h, i, label, extra))
            h.save()
    res.finish()


def ceiling(h: Harness, i: int, k: int = 30_000, cpu: int = 1) -> Ceiling:
    """nats-server's fsynced publishes per second from 64 in flight, the client on `cpu`:
    1 is the ceiling the issue judges by; 0 shares nats-server's CPU as the ingress
    does (the per-core rule pins both to CPU 0), reported beside it."""
    with h.running(f"ceiling-cpu{cpu}-round{i}", ingress=False, sync="always") as started:
        url = f"nats://127.0.0.1:{h.nats_port}"
        t0 = ticks(started.nats.pid)
        got = tools.natsq_cli(url, cpu, 300, ["fill", str(k), "--window", str(h.opts.conns)],
                              _Fill)  # fmt: skip
        used = 100 * (ticks(started.nats.pid) - t0) / HZ / max(got.seconds, 1e-3)
    per_s = round(got.published / got.seconds) if got.seconds else 0
    log(f"  nats-server, client on CPU {cpu}: {per_s} fsynced publishes/s "
        f"({got.published} in {got.seconds} s)")  # fmt: skip
    return Ceiling(published=got.published, seconds=got.seconds, per_s=per_s,
                   store_cpu_pct=round(used))  # fmt: skip


class _Fill(msgspec.Struct):
    published: int
    seconds: float


# A reference run that dies without a row is retried this many times. Seen here:
# run-seed-ref.sh's `tree_ticks` reads `cat /proc/[0-9]*/stat 2>/dev/null | awk`
# under `set -euo pipefail`, so when any process on the machine exits between the
# glob and the read, `cat` fails and the script exits 1 with no message, its
# results.tsv holding only the header. Likelier the busier the machine.
REF_ATTEMPTS = 3


def ref_round(h: Harness, i: int, mode: str) -> RefRound:
    """One round of the reference with Redis in `mode`, by run-seed-ref.sh itself;
    a run that leaves no result row is run again (`REF_ATTEMPTS` in all)."""
    attempt = 0
    while True:
        attempt += 1
        name = f"ref-{mode}-round{i}" + (f"-attempt{attempt}" if attempt > 1 else "")
        rc = _run_reference(h, i, mode, name)
        try:
            ref = ref_row(h.out / name, h.out / f"{name}.log", rc)
        except NoRowError as exc:
            if attempt == REF_ATTEMPTS:
                raise BenchError(f"reference round {i} (Redis {mode}): {exc}") from None
            log(f"  reference round {i} (Redis {mode}) left no result: {exc}; running it again")
            continue
        log(
            f"  reference: {ref.rps} req/s p50 {ref.p50_ms} ms p99 {ref.p99_ms} ms "
            f"stored {ref.stored} fresh {ref.fresh_acks} -> {ref.check} "
            f"(noise: {ref.noise}, other cpu {ref.other_cpu_pct}%)"
        )
        return ref


def _run_reference(h: Harness, i: int, mode: str, name: str) -> int | None:
    """Run run-seed-ref.sh once into `h.out / name` (its log beside it); its exit code."""
    o, out = h.opts, h.out / name
    argv = [str(o.ref_dir / "run-seed-ref.sh"), "--redis-mode", mode, "--reps", "1",
            "--duration", f"{o.duration}s", "--warmup", f"{o.warmup}s", "--conns", str(o.conns),
            "--port", str(o.ref_port), "--redis-port", str(o.redis_port),
            "--quiet-wait", str(o.quiet_wait), "--quiet-pct", str(o.quiet_pct),
            "--out", str(out)]  # fmt: skip
    with (h.out / f"{name}.log").open("wb") as fh:
        fh.write(("# " + " ".join(shlex.quote(x) for x in argv) + "\n").encode())
        fh.flush()
        proc = spawn(argv, stdout=fh)
        try:
            proc.wait(timeout=4 * o.quiet_wait + 300)
        except subprocess.TimeoutExpired:
            proc.terminate()  # its trap stops redis, node and wrk by PID
            proc.wait(30)
            raise BenchError(f"run-seed-ref.sh did not finish; see {name}.log") from None
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    return proc.returncode


class NoRowError(BenchError):
    """A reference run ended without its result row (worth running again)."""


def ref_row(out: Path, log_path: Path, rc: int | None) -> RefRound:
    """The result row run-seed-ref.sh left under `out` (exit code `rc`, output in
    `log_path`); NoRowError when there is none, BenchError when it is not its layout."""
    tsvs = sorted(out.glob("*/results.tsv"))
    if not tsvs:
        raise NoRowError(f"run-seed-ref.sh (exit {rc}) left no results.tsv; see {log_path}")
    with tsvs[-1].open() as fh:
        row: dict[str, object] | None = next(csv.DictReader(fh, delimiter="\t"), None)
    if row is None:
        raise NoRowError(
            f"run-seed-ref.sh (exit {rc}) stopped before its first result row "
            f"({tsvs[-1]} holds only the header); see {log_path}"
        )
    row = dict(row)
    row["store_cpu_pct"] = row.pop("redis_cpu_pct", None)
    row["stored"] = row.pop("llen_alerts", None)
    row.update(rc=rc, run_dir=str(tsvs[-1].parent))
    try:
        return msgspec.convert(row, RefRound)
    except msgspec.ValidationError as exc:
        raise BenchError(f"{tsvs[-1]}: not the columns expected: {exc}") from None


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


def ab_round(
    h: Harness,
    i: int,
    variant: str = "",
    extra: dict[str, str] | None = None,
    *,
    sync: str | None = None,
    module: str = "ingress",
) -> AbRound:
    """One round of alertbridge (with `extra` environment for a variant, nats-server's
    fsync policy `sync`; `module` serves the webhook: bench.stripped is the floor, which
    checks nothing and so is not smoke-tested, and whose stored count is not judged)."""
    tag = f"ab{'-' + variant if variant else ''}-round{i}"
    env = lambda: h.ab_env(**(extra or {}))  # noqa: E731
    with h.running(tag, env, sync=sync, module=module) as started:
        if module == "ingress":
            h.smoke()
        m = _measure(h, started, tag)
    row = _row(h, i, m)
    if module != "ingress":
        row = msgspec.structs.replace(row, check="n/a")
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
