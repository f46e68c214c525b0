"""The one table `just bench` prints (and writes as table.txt and table.md): a row per
measurement, the reference beside alertbridge, with its target (throughput and burst:
issue 19's; the others: issue 5's) and whether it was met."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Literal

from bench.results import number
from bench.table_worker import scaling_rows, worker_rows
from bench.tablefmt import HEAD, MICRO, TIMES, Row, fmt, le, yes

if TYPE_CHECKING:
    from bench.results import BurstResult, Medians, Results, Throughput


def rows(r: Results) -> list[Row]:
    """Every row, section by section; a phase that did not run has none."""
    out = _throughput_rows(r)
    out += _burst_rows(r)
    out += worker_rows(r)
    out += scaling_rows(r)
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
         yes(le(ab_m.p99_ms, ref_m.p99_ms))),
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
    out += _speed_rows([x.calib_ms for side in sides for x in side])
    return out


# Past this spread of the host-speed probe within a run, the VM itself ran at different
# speeds between rounds (which the load and steal counters above do not see).
SPEED_SPREAD = 1.25


def _speed_rows(probes: list[str | int]) -> list[Row]:
    """The host-speed probe taken before each run (sha256 of 128 MiB on CPU 0)."""
    ms = [v for v in (number(p) for p in probes) if v]
    if not ms:
        return []
    spread = max(ms) / min(ms)
    return [("  host-speed probe before each run (sha256 of 128 MiB, CPU 0): min / max ms",
             "", f"{fmt(min(ms))} / {fmt(max(ms))}",
             f"spread ≤ {SPEED_SPREAD}{TIMES}",
             f"{yes(spread <= SPEED_SPREAD)} ({spread:.2f}{TIMES})")]  # fmt: skip


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
        *_shared_ceiling_rows(t, ab_f.rps or 0),
        ("  every 200 stored (runs OK)", f"{rc.count('OK')}/{len(rc)}",
         f"{ac.count('OK')}/{len(ac)}", "all", yes(all(c == "OK" for c in ac))),
    ]  # fmt: skip


def _shared_ceiling_rows(t: Throughput, ingress_rps: float) -> list[Row]:
    """The ceiling with the client on nats-server's CPU, as the ingress is (reported)."""
    shared = statistics.median(c.per_s for c in t.ceiling_shared) if t.ceiling_shared else 0
    if not shared:
        return []
    ratio = fmt(ingress_rps / shared, 2)
    return [("    same, the client on nats-server's CPU (as the ingress is placed)", "",
             fmt(shared), "reported", f"(ingress {ratio}{TIMES})")]  # fmt: skip


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
        # At `always` a 503 (no PubAck within the publish timeout) is the truthful answer
        # for an alert not yet fsynced; TradingView resends a 503 after 5 s and finds it
        # stored. What must hold: every 200 stored, none doubled.
        distinct = fs.sent - fs.sent_dup_ids
        held = fs.stored_unique_ids >= fs.accepted_unique_ids and fs.doubled == 0
        out += [
            (f"  {fs.ingresses} ingress processes, sync always: max / p99 ms; 200s", "",
             f"{fmt(fs.max_ms)} / {fmt(fs.p99_ms)}; {fmt(fs.status.get('200'))}",
             "reported", ""),
            ("    ids answered 200 ≤ stored (of distinct sent); doubled", "",
             f"{fmt(fs.accepted_unique_ids)} ≤ {fmt(fs.stored_unique_ids)} (of "
             f"{fmt(distinct)}); {fmt(fs.doubled)}", "every 200 stored; 0", yes(held)),
        ]  # fmt: skip
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
