"""The table's worker rows (3: the end-to-end tail, the worker alone, the drains against
the ingress and against the floor) and scaling rows (4), with issue 19's targets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.tablefmt import MICRO, TIMES, Row, fmt, le, yes

if TYPE_CHECKING:
    from bench.results import Results
    from bench.results_worker import E2E, DrainResult, WorkerPhase

# The tail (issue 19, point 5): in each of the consecutive runs at the one-second level.
TAIL_P99_MS, TAIL_MAX_MS = 10.0, 50.0
JUDGED_LEVEL = "1s"
TOOK_AT_LEAST = 0.98  # of the offered rate, for a run's tail to count
# Scaling (point 4): the rate must not fall as workers are added (within this much), and
# nats-server's CPU per alert stays flat (the largest within this factor of the smallest).
NOT_FALLING, FLAT = 0.95, 1.3


def worker_rows(r: Results) -> list[Row]:
    """The end-to-end runs and the worker alone, then the drains, level by level."""
    w = r.worker
    if w is None:
        return []
    out: list[Row] = []
    for n, (sync, level) in enumerate(w.levels.items()):
        out += _e2e_rows(sync, level.e2e_runs, judged=sync == JUDGED_LEVEL)
        if n == 0:
            out += _alone_rows(w)
    for sync, level in w.levels.items():
        out += _drain_rows(r, sync, level.paper_64_symbols, level.paper_1_symbol)
        out += _floor_rows(level.paper_64_symbols, level.stripped_64_symbols)
    return out


def _took(e: E2E) -> float | None:
    return e.load.achieved_rps if e.load else None


def _counts(e: E2E) -> bool:
    """A run whose tail says something: it took the offered rate and executed it all."""
    took = _took(e)
    return e.all_executed and took is not None and took >= TOOK_AT_LEAST * e.rate


def _e2e_rows(sync: str, runs: list[E2E], *, judged: bool) -> list[Row]:
    """Every alert of each run counts (`latency_all_*`): no warm-up is left out."""
    if not runs:
        return []
    p99s = [e.latency_all_p99_ms for e in runs]
    maxes = [e.latency_all_max_ms for e in runs]
    valid = all(_counts(e) for e in runs)
    p99_ok = valid and all(le(p, TAIL_P99_MS) for p in p99s)
    max_ok = valid and all(le(m, TAIL_MAX_MS) for m in maxes)
    took = " / ".join(fmt(_took(e)) for e in runs)
    return [
        (f"3 e2e latency, {runs[0].rate}/s via ingress, sync {sync}, {len(runs)} run(s) "
         f"(took {took}/s; all executed: {'yes' if all(e.all_executed for e in runs) else 'NO'})"
         ": p50 ms", "n/a", " / ".join(fmt(e.latency_p50_ms, 1) for e in runs), "", ""),
        ("  p99 ms, every alert", "n/a", " / ".join(fmt(p, 1) for p in p99s),
         f"≤ {TAIL_P99_MS:g} each" if judged else "reported", yes(p99_ok) if judged else ""),
        ("  max ms, every alert", "n/a", " / ".join(fmt(m, 1) for m in maxes),
         f"≤ {TAIL_MAX_MS:g} each" if judged else "reported", yes(max_ok) if judged else ""),
        ("  backlog at end of load; worker CPU %", "n/a",
         " / ".join(f"{fmt(e.backlog_at_end_of_load.num_pending)}; {fmt(e.worker_cpu_pct)}"
                    for e in runs), "", ""),
    ]  # fmt: skip


def _alone_rows(w: WorkerPhase) -> list[Row]:
    out: list[Row] = []
    if w.e2e_sweep:
        rates = " / ".join(f"{x.rate}" for x in w.e2e_sweep)
        p99s = " / ".join(fmt(x.latency_p99_ms, 1) for x in w.e2e_sweep)
        out.append((f"  worker alone, straight to JetStream: p99 ms at {rates} alerts/s",
                    "n/a", p99s, "", ""))  # fmt: skip
    if e := w.e2e_direct:
        rate = fmt(e.publish.achieved_rate if e.publish else None)
        out.append((f"  same @ {rate}/s: p50 / p99 / max ms", "n/a",
                    f"{fmt(e.latency_p50_ms, 1)} / {fmt(e.latency_p99_ms, 1)} / "
                    f"{fmt(e.latency_max_ms, 1)}", "", ""))  # fmt: skip
    return out


def _drain_rows(
    r: Results, sync: str, many: DrainResult | None, one: DrainResult | None
) -> list[Row]:
    """The drain against the ingress's rate at the same fsync level, in the same run."""
    t = r.throughput
    side = "alertbridge" if sync == "1s" else "alertbridge_fsync"
    m = t.medians.get(side) if t else None
    ingress = m.rps if m is not None else None
    out: list[Row] = []
    if many is not None:
        v = many.rate_mid80_per_s if many.all_executed else None
        ratio = v / ingress if v is not None and ingress else None
        target = f"≥ ingress {fmt(ingress)} (aim 1.5{TIMES})" if ingress else "≥ the ingress"
        met = f"{yes(ratio >= 1.0)} ({ratio:.2f}{TIMES})" if ratio is not None else ""
        if not many.all_executed:
            met = "NO (not all executed)"
        out += [
            (f"  drain rate, paper broker, 64 symbols, 1 worker, sync {sync}, /s", "n/a",
             fmt(many.rate_mid80_per_s) + _star(many), target, met),
            (f"    CPU per executed alert (middle 80 %), worker / nats-server, {MICRO}s",
             "n/a", f"{fmt(many.worker_cpu_us_per_alert)} / "
             f"{fmt(many.server_steady_cpu_us_per_alert)}", "", ""),
        ]  # fmt: skip
    if one is not None:
        out.append((f"  drain rate, paper broker, 1 symbol (one lane, in order), sync {sync}, /s",
                    "n/a", fmt(one.rate_mid80_per_s) + _star(one), "reported",
                    "" if one.all_executed else "NO (not all executed)"))  # fmt: skip
    return out


def _floor_rows(shipped: DrainResult | None, floor: DrainResult | None) -> list[Row]:
    """The worker against its floor (bench.stripped_worker: pull, event, PubAck, ack)."""
    if shipped is None or floor is None:
        return []
    a, b = shipped.worker_cpu_us_per_alert, floor.worker_cpu_us_per_alert
    ratio = a / b if a and b else None
    nats = fmt(floor.server_steady_cpu_us_per_alert)
    return [
        ("    floor (pull, event, PubAck, ack; no checks, no broker): drain /s", "n/a",
         fmt(floor.rate_mid80_per_s) + _star(floor), "reported",
         "" if floor.all_executed else "NO (not all executed)"),
        (f"    worker CPU per alert (middle 80 %), shipped vs floor, {MICRO}s; nats-server's "
         "for the floor", "n/a",
         f"{fmt(a)} vs {fmt(b)} ({fmt(ratio, 2)}{TIMES}); {nats}",
         "reported", ""),
    ]  # fmt: skip


def _star(d: DrainResult) -> str:
    return "*" if d.noise == "noisy" else ""


def scaling_rows(r: Results) -> list[Row]:
    """Per partition count: the rate for 1, 2, 4 workers (must not fall) and nats-server's
    CPU per alert (must stay flat)."""
    sc = r.scaling or []
    parts = sorted({x.partitions for x in sc if x.partitions is not None})
    out: list[Row] = []
    for n, partitions in enumerate(parts):
        row = [x for x in sc if x.partitions == partitions]
        rates = [x.rate_mid80_per_s if x.all_executed else None for x in row]
        first = rates[0]
        holds = first is not None and all(
            v is not None and v >= NOT_FALLING * first for v in rates[1:]
        )
        delay = r.settings.broker_delay * 1000
        label = f"4 drain /s, {delay:.0f} ms broker, " if n == 0 else "  same, "
        nsymbols = row[0].symbols if row[0].symbols is not None else 64
        out.append((
            label + " / ".join(str(x.workers) for x in row)
            + f" workers ({partitions} partitions, {nsymbols} symbols)",
            "n/a", " / ".join(fmt(x.rate_mid80_per_s) + _star(x) for x in row),
            f"does not fall (≥ {NOT_FALLING:g}{TIMES} 1 worker's)", yes(holds),
        ))  # fmt: skip
        cpu = [x.server_steady_cpu_us_per_alert or x.server_cpu_us_per_alert for x in row]
        if all(c is not None for c in cpu):
            flat = max(c or 0 for c in cpu) <= FLAT * max(min(c or 0 for c in cpu), 1)
            out.append((
                f"  nats-server CPU {MICRO}s per alert, same workers", "n/a",
                " / ".join(fmt(c) for c in cpu), f"flat (≤ {FLAT:g}{TIMES})", yes(flat),
            ))  # fmt: skip
    return out
