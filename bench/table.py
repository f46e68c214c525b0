"""The one table `just bench` prints (and writes as table.txt and table.md): a row per
measurement, the reference beside alertbridge, with its target (throughput and burst:
issue 19's; the others: issue 5's) and whether it was met."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from bench.results import (
        E2E,
        BurstResult,
        DrainResult,
        Medians,
        Results,
        Throughput,
        WorkerPhase,
    )

Row = tuple[str, str, str, str, str]
HEAD: Row = ("measurement", "reference (Express+Redis)", "alertbridge", "target", "met")
TIMES = "\N{MULTIPLICATION SIGN}"
NONE = "\N{EN DASH}"
MICRO = "\N{MICRO SIGN}"


def fmt(v: object, nd: int = 0) -> str:
    """A figure for people: thousands separated, `nd` decimals for a float, NONE for none."""
    if v is None:
        return NONE
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def yes(met: object) -> str:
    return "yes" if met else "NO"


def _le(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and a <= b


def rows(r: Results) -> list[Row]:
    """Every row, section by section; a phase that did not run has none."""
    out = _throughput_rows(r)
    out += _burst_rows(r)
    out += _worker_rows(r)
    out += _scaling_rows(r)
    out += _memory_rows(r)
    out += _projections_rows(r)
    if any("*" in row[2] for row in out):
        out.append(("  (* = other load > 10 % of a core during that run)", "", "", "", ""))
    return out


# ----------------------------------------------------------------- 1 throughput
def _throughput_rows(r: Results) -> list[Row]:
    t = r.throughput
    ref_m = t.medians.get("reference") if t else None
    ab_m = t.medians.get("alertbridge") if t else None
    if t is None or ref_m is None or ab_m is None:
        return []
    s = r.settings
    ratio = (ab_m.rps or 0) / ref_m.rps if ref_m.rps else 0
    rc, ac = t.checks["reference"], t.checks["alertbridge"]
    out: list[Row] = [
        (f"1 ingress req/s, 1 s level (Redis everysec | sync 1s; median of "
         f"{len(t.alertbridge)}{TIMES}{s.duration} s, -c{s.conns}, pinned)", fmt(ref_m.rps),
         fmt(ab_m.rps), f"≥ 1.0{TIMES} ref = {fmt(ref_m.rps)}",
         f"{yes(ratio >= 1.0)} ({ratio:.2f}{TIMES})"),
        (f"  long-term aim: 1.5{TIMES} the reference", "", "",
         f"≥ {fmt(1.5 * (ref_m.rps or 0))}", f"{yes(ratio >= 1.5)} ({ratio:.2f}{TIMES})"),
        ("  p50 / p99 latency, ms", _p50_p99(ref_m), _p50_p99(ab_m), "p99 ≤ ref",
         yes(_le(ab_m.p99_ms, ref_m.p99_ms))),
        (f"  server CPU per request (app + store), {MICRO}s", fmt(ref_m.srv_cpu_us_per_req),
         fmt(ab_m.srv_cpu_us_per_req), "", ""),
        ("  app / store CPU, % of a core",
         f"{fmt(ref_m.app_cpu_pct)} / {fmt(ref_m.store_cpu_pct)}",
         f"{fmt(ab_m.app_cpu_pct)} / {fmt(ab_m.store_cpu_pct)}", "", ""),
        ("  every 200 stored (runs OK)", f"{rc.count('OK')}/{len(rc)}",
         f"{ac.count('OK')}/{len(ac)}", "all", yes(all(c == "OK" for c in ac))),
    ]  # fmt: skip
    out += _stripped_rows(t, ab_m)
    out += _fsync_rows(t)
    out += _variant_rows(r, t, ref_m)
    sides = t.sides().values()
    runs_total = sum(len(side) for side in sides)
    noisy = sum(x.noise == "noisy" for side in sides for x in side)
    out.append(("  noisy runs (other load > 10 % of a core / steal)", "",
                f"{noisy} of {runs_total}", "0", ""))  # fmt: skip
    return out


def _app_us(m: Medians) -> float | None:
    """The app process's CPU per request, µs (from the medians)."""
    return m.app_cpu_pct * 1e4 / m.rps if m.app_cpu_pct and m.rps else None


def _stripped_rows(t: Throughput, ab_m: Medians) -> list[Row]:
    st = t.medians.get("stripped")
    if st is None:
        return []
    shipped, floor = _app_us(ab_m), _app_us(st)
    over = shipped / floor if shipped and floor else None
    return [
        (f"  ingress CPU per request, {MICRO}s: shipped vs stripped (read, publish, answer)",
         "", f"{fmt(shipped)} vs {fmt(floor)} ({fmt(st.rps)} req/s)", f"≤ 1.3{TIMES} floor",
         f"{yes(over is not None and over <= 1.3)} ({fmt(over, 2)}{TIMES})"),
    ]  # fmt: skip


def _fsync_rows(t: Throughput) -> list[Row]:
    ref_f, ab_f = t.medians.get("reference_fsync"), t.medians.get("alertbridge_fsync")
    if ref_f is None or ab_f is None:
        return []
    ratio = (ab_f.rps or 0) / ref_f.rps if ref_f.rps else 0
    ceiling = statistics.median(c.per_s for c in t.ceiling) if t.ceiling else None
    of_ceiling = (ab_f.rps or 0) / ceiling if ceiling else None
    rc, ac = t.checks["reference_fsync"], t.checks["alertbridge_fsync"]
    return [
        ("1 ingress req/s, fsync level (Redis always | sync always)", fmt(ref_f.rps),
         fmt(ab_f.rps), "reported", f"({ratio:.2f}{TIMES} ref)"),
        ("  p50 / p99 latency, ms", _p50_p99(ref_f), _p50_p99(ab_f), "", ""),
        ("  nats-server alone: fsynced publishes/s, 64 in flight", "", fmt(ceiling),
         f"ingress ≥ 0.9{TIMES} = {fmt(0.9 * ceiling if ceiling else None)}",
         f"{yes(of_ceiling is not None and of_ceiling >= 0.9)} ({fmt(of_ceiling, 2)}{TIMES})"),
        ("  every 200 stored (runs OK)", f"{rc.count('OK')}/{len(rc)}",
         f"{ac.count('OK')}/{len(ac)}", "all", yes(all(c == "OK" for c in ac))),
    ]  # fmt: skip


def _p50_p99(m: Medians) -> str:
    return f"{fmt(m.p50_ms, 1)} / {fmt(m.p99_ms, 1)}"


def _variant_rows(r: Results, t: Throughput, ref_m: Medians) -> list[Row]:
    out: list[Row] = []
    for side, vm in t.medians.items():
        if not side.startswith("alertbridge["):
            continue
        label = side[len("alertbridge[") : -len("]")]
        env = r.settings.variants.get(label, {})
        what = ",".join(f"{k}={v}" for k, v in env.items())
        vs_ref = f"{(vm.rps or 0) / ref_m.rps:.2f}{TIMES} ref" if ref_m.rps else ""
        out.append((f"  variant {label} ({what}): req/s, p50/p99 ms", "",
                    f"{fmt(vm.rps)}, {_p50_p99(vm)}", "", vs_ref))  # fmt: skip
    return out


# ----------------------------------------------------------------- 2 burst
BurstField = Literal["sent", "max_ms", "p50_ms", "p99_ms", "send_span_s", "peak_concurrency",
                     "stored", "accepted_unique_ids", "doubled"]  # fmt: skip


def _g(side: BurstResult | None, name: BurstField) -> object:
    """A burst's figure, None when that side did not run."""
    return None if side is None else getattr(side, name)


def _status(side: BurstResult | None) -> dict[str, int]:
    return {} if side is None else side.status


def _stored_line(side: BurstResult | None) -> str:
    return (f"{fmt(_g(side, 'stored'))} = {fmt(_g(side, 'accepted_unique_ids'))}; "
            f"{fmt(_g(side, 'doubled'))}")  # fmt: skip


def _all_stored(side: BurstResult | None) -> str:
    return yes(side is not None and side.stored_equals_accepted and side.doubled == 0)


def _burst_rows(r: Results) -> list[Row]:
    b = r.burst
    if b is None or (b.reference is None and b.alertbridge is None):
        return []
    rb, ab = b.reference, b.alertbridge
    fast = ab is not None and (ab.send_span_s or 9) <= 1.05 and ab.peak_concurrency >= 500
    out: list[Row] = [
        (f"2 burst {fmt(_g(ab, 'sent'))} over {r.settings.burst_over} s, fresh conns, "
         "one ingress (target: the default count, below): max answer ms",
         fmt(_g(rb, "max_ms")), fmt(_g(ab, "max_ms")), "reported", ""),
        ("  p50 / p99 answer ms", f"{fmt(_g(rb, 'p50_ms'))} / {fmt(_g(rb, 'p99_ms'))}",
         f"{fmt(_g(ab, 'p50_ms'))} / {fmt(_g(ab, 'p99_ms'))}", "", ""),
        ("  answers by status", " ".join(f"{k}:{v}" for k, v in _status(rb).items()),
         " ".join(f"{k}:{v}" for k, v in _status(ab).items()), "all 200",
         yes(list(_status(ab)) == ["200"])),
        ("  sent over s / peak open connections",
         f"{fmt(_g(rb, 'send_span_s'), 2)} / {fmt(_g(rb, 'peak_concurrency'))}",
         f"{fmt(_g(ab, 'send_span_s'), 2)} / {fmt(_g(ab, 'peak_concurrency'))}",
         "≤ 1 s / ≥ 500", yes(fast)),
        ("  stored = accepted ids; doubled", _stored_line(rb), _stored_line(ab), "equal; 0",
         _all_stored(ab)),
    ]  # fmt: skip
    if sc := b.alertbridge_scaled:
        out += [
            (f"  {sc.ingresses} ingress processes (the default), one port, sync 1s: "
             "max / p99 ms; 200s", "",
             f"{fmt(sc.max_ms)} / {fmt(sc.p99_ms)}; {fmt(sc.status.get('200'))}",
             "< 3,000; all", yes(sc.max_under_3s and list(sc.status) == ["200"])),
            ("    stored = accepted ids; doubled", "", _stored_line(sc), "equal; 0",
             _all_stored(sc)),
        ]  # fmt: skip
    if fs := b.alertbridge_fsync:
        out += [
            (f"  {fs.ingresses} ingress processes, sync always: max / p99 ms; 200s", "",
             f"{fmt(fs.max_ms)} / {fmt(fs.p99_ms)}; {fmt(fs.status.get('200'))}",
             "reported", ""),
            ("    stored = accepted ids; doubled", "", _stored_line(fs), "equal; 0",
             _all_stored(fs)),
        ]  # fmt: skip
    return out


# ----------------------------------------------------------------- 3 worker
# Issue 19's tail: in each of the consecutive runs at 1,000/s.
TAIL_P99_MS, TAIL_MAX_MS = 10.0, 50.0


def _worker_rows(r: Results) -> list[Row]:
    w = r.worker
    if w is None:
        return []
    out: list[Row] = []
    for sync, level in w.levels.items():
        out += _e2e_rows(sync, level.e2e_runs)
        if sync == next(iter(w.levels)):
            out += _alone_rows(w)
    for sync, level in w.levels.items():
        out += _drain_rows(r, sync, level.paper_64_symbols, level.paper_1_symbol)
        out += _floor_rows(level.paper_64_symbols, level.stripped_64_symbols)
    return out


def _e2e_rows(sync: str, runs: list[E2E]) -> list[Row]:
    if not runs:
        return []
    first = runs[0]
    took = " / ".join(fmt(e.load.achieved_rps if e.load else None) for e in runs)
    p99s = [e.latency_p99_ms for e in runs]
    maxes = [e.latency_max_ms for e in runs]
    ok = all((p or 1e9) <= TAIL_P99_MS for p in p99s) and all(
        (m or 1e9) <= TAIL_MAX_MS for m in maxes
    )
    judged = len(runs) > 1
    return [
        (f"3 e2e latency, {first.rate}/s via ingress, sync {sync}, {len(runs)} run(s) "
         f"(took {took}/s): p50 ms", "n/a", " / ".join(fmt(e.latency_p50_ms, 1) for e in runs),
         "", ""),
        ("  p99 ms", "n/a", " / ".join(fmt(p, 1) for p in p99s),
         f"≤ {TAIL_P99_MS:g} each" if judged else "reported", yes(ok) if judged else ""),
        ("  max ms", "n/a", " / ".join(fmt(m, 1) for m in maxes),
         f"≤ {TAIL_MAX_MS:g} each" if judged else "reported", ""),
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
        v = many.rate_mid80_per_s
        ratio = v / ingress if v is not None and ingress else None
        target = f"≥ ingress {fmt(ingress)} (aim 1.5{TIMES})" if ingress else "≥ the ingress"
        met = f"{yes(ratio >= 1.0)} ({ratio:.2f}{TIMES})" if ratio is not None else ""
        out += [
            (f"  drain rate, paper broker, 64 symbols, 1 worker, sync {sync}, /s", "n/a",
             fmt(v) + _star(many), target, met),
            (f"    CPU per executed alert, worker (start-up incl.) / nats-server, {MICRO}s",
             "n/a", f"{fmt(many.worker_cpu_us_per_alert)} / "
             f"{fmt(many.server_cpu_us_per_alert)}", "", ""),
        ]  # fmt: skip
    if one is not None:
        out.append((f"  drain rate, paper broker, 1 symbol (one lane, in order), sync {sync}, /s",
                    "n/a", fmt(one.rate_mid80_per_s) + _star(one), "reported", ""))  # fmt: skip
    return out


def _floor_rows(shipped: DrainResult | None, floor: DrainResult | None) -> list[Row]:
    """The worker against its floor (bench.stripped_worker: pull, event, PubAck, ack)."""
    if shipped is None or floor is None:
        return []
    ratio = (
        (shipped.worker_cpu_us_per_alert or 0) / floor.worker_cpu_us_per_alert
        if floor.worker_cpu_us_per_alert
        else None
    )
    return [
        ("    floor (pull, event, PubAck, ack; no checks, no broker): drain /s", "n/a",
         fmt(floor.rate_mid80_per_s) + _star(floor), "reported", ""),
        (f"    worker CPU per alert, shipped vs floor, {MICRO}s; nats-server's for the floor",
         "n/a", f"{fmt(shipped.worker_cpu_us_per_alert)} vs {fmt(floor.worker_cpu_us_per_alert)}"
         f" ({fmt(ratio, 2)}{TIMES}); {fmt(floor.server_cpu_us_per_alert)}", "reported", ""),
    ]  # fmt: skip


def _star(d: DrainResult) -> str:
    return "*" if d.noise == "noisy" else ""


# ----------------------------------------------------------------- 4 scaling
def _scaling_rows(r: Results) -> list[Row]:
    sc = r.scaling or []
    parts = sorted({x.partitions for x in sc if x.partitions is not None})
    out: list[Row] = []
    for n, partitions in enumerate(parts):
        row = [x for x in sc if x.partitions == partitions]
        grows = len(row) >= 2 and (row[-1].rate_mid80_per_s or 0) > 1.3 * (
            row[0].rate_mid80_per_s or 1
        )
        delay = r.settings.broker_delay * 1000
        label = f"4 drain /s, {delay:.0f} ms broker, " if n == 0 else "  same, "
        nsymbols = row[0].symbols if row[0].symbols is not None else 64
        last = partitions == parts[-1]
        out.append((
            label + " / ".join(str(x.workers) for x in row)
            + f" workers ({partitions} partitions, {nsymbols} symbols)",
            "n/a", " / ".join(fmt(x.rate_mid80_per_s) + _star(x) for x in row),
            "grows with workers" if last else "", yes(grows) if last else "",
        ))  # fmt: skip
        cpu = [x.server_cpu_us_per_alert for x in row]
        if all(c is not None for c in cpu):
            flat = max(c or 0 for c in cpu) <= 1.3 * max(min(c or 0 for c in cpu), 1)
            out.append((
                "  nats-server CPU µs per alert, same workers", "n/a",
                " / ".join(fmt(c) for c in cpu), "flat", yes(flat),
            ))  # fmt: skip
    return out


# ----------------------------------------------------------------- 5 memory, dedup
def _mib(kib: int) -> int:
    return round(kib / 1024)


def _memory_rows(r: Results) -> list[Row]:
    out: list[Row] = []
    m = r.memory
    if m is not None and m.after is not None:
        rest, after, stored = m.at_rest, m.after, m.alerts_stored or 0
        out += [
            (f"5 RSS ingress, at rest → after {fmt(m.alerts_stored)} alerts, MiB", "n/a",
             f"{_mib(rest.ingress.vm_rss)} → {_mib(after.ingress.vm_rss)}", "after 1M",
             yes(stored >= 1_000_000)),
            (f"  RSS worker, at rest → after {fmt(m.executed)} executed, MiB", "n/a",
             f"{_mib(rest.worker.vm_rss)} → {_mib(after.worker.vm_rss)}", "", ""),
        ]  # fmt: skip
    d = r.dedup
    if d is not None and d.bytes_per_id is not None:
        out += [
            (f"  nats-server dedup map: bytes per id (K={fmt(d.k)})", "n/a",
             fmt(d.bytes_per_id), "stated", "yes"),
            ("  default 1 h window at 1,000 alerts/s, MiB", "n/a",
             fmt(d.mib_for_1h_at_1000_per_s), "", ""),
        ]  # fmt: skip
    return out


# ----------------------------------------------------------------- 6 projections
def _projections_rows(r: Results) -> list[Row]:
    """The read side with a long history (issue 18, point 5): the projector keeps up with
    the worker's drain; the CLI and the API's query answer well under a second."""
    p = r.projections
    if p is None or p.fold_per_s is None:
        return []
    drain = p.worker_drain_per_s
    cli, query = p.cli_orders_50, p.list_alerts_50
    cli_s = None if cli is None else cli.median_ms / 1000
    return [
        (f"6 projector fold rate, /s (catching up {fmt(p.events)} events)", "n/a",
         fmt(p.fold_per_s), f"≥ worker drain {fmt(drain)}",
         yes(drain is not None and p.fold_per_s >= drain)),
        ("  `alertbridge orders --limit 50`, a process, median s", "n/a", fmt(cli_s, 2),
         "< 1 s", yes(cli_s is not None and cli_s < 1)),
        ("  `alertbridge --help`, a process, median s", "n/a",
         fmt(None if p.cli_help is None else p.cli_help.median_ms / 1000, 2), "", ""),
        ("  GET /api/alerts?limit=50's query, median ms", "n/a",
         fmt(None if query is None else query.median_ms, 2), "< 1 s",
         yes(query is not None and query.median_ms < 1000)),
    ]  # fmt: skip


# ----------------------------------------------------------------- rendering
def text_table(r: Results) -> str:
    """The machine, then the rows in aligned columns."""
    body = rows(r)
    widths = [max(len(x[i]) for x in [HEAD, *body]) for i in range(5)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    mach = r.machine
    out = [
        f"machine: {mach.nproc} CPUs, {mach.cpu}, {mach.ram_gib} GiB RAM; "
        f"load at start {mach.loadavg_at_start}",
        line(HEAD),
        line(tuple("-" * w for w in widths)),
    ]
    out += [line(x) for x in body]
    return "\n".join(out)


def markdown_table(r: Results) -> str:
    """The rows as a Markdown table."""
    head = "| " + " | ".join(HEAD) + " |"
    sep = "|---|---|---|---|---|"
    cells = [f"| {' | '.join(c.replace('|', '/') for c in x)} |" for x in rows(r)]
    return "\n".join([head, sep, *cells])
