"""`just bench` (via bench/run.sh): the reference design (Express + Redis, from a copy of
../shared/bench) and alertbridge side by side, as issue 5 asks. Prints ONE table.

Phases (`--phases`, default all, in this order):
  throughput  wrk + load/alerts.lua, 64 connections, server + its store pinned to CPU 0,
              wrk to CPU 1; alternating rounds reference / alertbridge, each round a fresh
              server lifetime with a warm-up; the reference runs through
              run-seed-ref.sh itself (--reps 1 per round), alertbridge through the same
              loop re-done here (its answers and its store differ: see README.md).
              After each alertbridge run the ALERTS stream is counted and its
              Nats-Msg-Ids checked for doubles.
  burst       10,000 alerts started evenly over 1 s, each on a fresh connection
              (loadgen.py burst), both designs; every 20th repeats an earlier id.
  worker      end-to-end latency at 1,000 alerts/s (the `latency` of `executed`
              events), drain rate with the paper broker (64 symbols, and 1 symbol).
  projections --proj-events executed events in EVENTS: the projector's fold rate from
              that backlog (beside the worker phase's drain rate), `alertbridge orders
              --limit 50` as a process, and the query behind GET /api/alerts?limit=50.
  scaling     drain rate with 1, 2, 4 worker processes against a 20 ms HTTP broker
              (slow_broker.py via the signed HTTP forwarder), with 16 and with 64
              partitions (one alert in flight per partition).
  memory      RSS of ingress and worker at rest and after N alerts.
  dedup       nats-server RSS after K publishes with unique Nats-Msg-Ids vs without.
  profile     py-spy on the ingress under wrk load (needs py-spy: see run.sh).

Every process started here is recorded by PID and stopped by that PID (TERM, then
KILL) when its phase ends or the bench is interrupted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import BenchError, log
from bench.harness import Harness
from bench.options import PHASES, Options
from bench.phases import REGISTRY
from bench.procs import PROCS
from bench.system import loadavg
from bench.table import markdown_table, text_table
from ops.tools.stack import default_ingresses

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bench.results import Results


def build_parser() -> argparse.ArgumentParser:
    """The command line (`bench/run.sh --help` shows it)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add = ap.add_argument
    add("--ref-dir", type=Path, required=True, help="a writable copy of ../shared/bench")
    add("--out", type=Path, required=True)
    add("--phases", default=",".join(PHASES), help=f"comma-separated of {PHASES}")
    add("--reps", type=int, default=3, help="throughput rounds (each side once per round)")
    add("--duration", type=int, default=15, help="seconds per measured wrk run")
    add("--warmup", type=int, default=5, help="seconds of wrk warm-up per server lifetime")
    add("--conns", type=int, default=64)
    add(
        "--ref-mode",
        choices=["durable", "volatile"],
        default="durable",
        help="Redis persistence of the reference (README's numbers: durable)",
    )
    add("--quiet-wait", type=int, default=300, help="max seconds to wait for an idle machine")
    add("--quiet-pct", type=int, default=10)
    add("--burst-n", type=int, default=10_000)
    add("--burst-over", type=float, default=1.0)
    add(
        "--burst-ingresses",
        type=int,
        default=default_ingresses(),
        help="the burst against this many ingress processes sharing the port, as many as "
        "`alertbridge up` starts by default (one per core, capped)",
    )
    add(
        "--durability",
        choices=["both", "1s", "always"],
        default="both",
        help="throughput and burst at equal durability: nats-server sync_interval 1s against "
        "Redis appendfsync everysec, `always` against `always` (both: each pair)",
    )
    add("--e2e-rate", type=int, default=1000)
    add("--e2e-seconds", type=int, default=30)
    add(
        "--e2e-runs",
        type=int,
        default=5,
        help="consecutive end-to-end runs through the ingress at the one-second level, "
        "where the tail is judged in each (with --durability always: one run, reported)",
    )
    add(
        "--e2e-sweep",
        default="100,300,500",
        help="worker alone: also these rates (alerts/s, comma-separated) straight into ALERTS",
    )
    add("--e2e-sweep-seconds", type=int, default=15)
    add("--drain-n", type=int, default=30_000)
    add("--drain-n-single", type=int, default=5_000)
    add("--drain-max-seconds", type=int, default=240)
    add(
        "--scaling-n",
        type=int,
        default=20_000,
        help="alerts per scaling drain (~20 s at ~900/s: the workers' joining at the start "
        "weighs little; 5,000 gave contradictory figures)",
    )
    add("--broker-delay", type=float, default=0.020)
    add("--mem-alerts", type=int, default=1_000_000)
    add("--mem-max-seconds", type=int, default=420, help="bound on sending")
    add("--mem-drain-seconds", type=int, default=240, help="bound on the worker catching up")
    add("--dedup-ids", type=int, default=1_000_000)
    add("--profile-seconds", type=int, default=15)
    add("--proj-events", type=int, default=1_000_000, help="events stored for `projections`")
    add("--proj-max-seconds", type=int, default=1200, help="bound on the projector's catch-up")
    add("--pyspy", default="", help="command that runs py-spy (run.sh finds one)")
    add(
        "--ab-env",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="extra environment for alertbridge's processes (e.g. ALERTBRIDGE_LOG_LEVEL=WARNING)",
    )
    add(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:VAR=VALUE[,VAR=VALUE]",
        help="throughput phase: also run alertbridge with this environment in every round "
        "(e.g. quiet-logs:ALERTBRIDGE_LOG_LEVEL=WARNING); shown as extra rows",
    )
    add("--ab-port", type=int, default=18090)
    add("--broker-port", type=int, default=18400)
    add("--ref-port", type=int, default=18080)
    add("--redis-port", type=int, default=16379)
    return ap


def parse_options(argv: Sequence[str] | None = None) -> Options:
    """The command line as Options; a bad `--variant` or `--phases` exits with usage."""
    ap = build_parser()
    ns = ap.parse_args(argv)
    variants: dict[str, dict[str, str]] = {}
    for spec in ns.variant:
        label, _, assignments = spec.partition(":")
        if not label or not assignments or not re.fullmatch(r"[\w.-]+", label):
            ap.error(f"--variant wants LABEL:VAR=VALUE[,VAR=VALUE], not {spec!r}")
        variants[label] = dict(kv.split("=", 1) for kv in assignments.split(","))
    fields = vars(ns) | {
        "e2e_sweep": [int(x) for x in str(ns.e2e_sweep).split(",") if x.strip()],
        "ab_env_extra": dict(kv.split("=", 1) for kv in ns.ab_env),
        "variants": variants,
    }
    opts = Options(**fields)
    unknown = set(opts.phase_list()) - set(PHASES)
    if unknown:
        ap.error(f"unknown phases: {sorted(unknown)}")
    return opts


def run_phases(harness: Harness, wanted: list[str]) -> int:
    """Each wanted phase in PHASES order; a phase that fails is noted and the next runs."""
    rc = 0
    for phase in PHASES:
        if phase not in wanted:
            continue
        log(f"=== phase {phase} (load {loadavg()})")
        try:
            REGISTRY[phase](harness)
        except BenchError as exc:
            log(f"phase {phase} FAILED: {exc}")
            harness.results.errors[phase] = str(exc)
            rc = 1
        harness.save()
    return rc


def _on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def report(results: Results, out: Path) -> None:
    """The table on stdout, and as table.txt and table.md beside results.json."""
    text = text_table(results)
    (out / "table.txt").write_text(text + "\n")
    (out / "table.md").write_text(markdown_table(results) + "\n")
    print()
    print(text)
    print(f"\nresults: {out}/results.json (per run: {out}/); markdown: {out}/table.md")
    if results.errors:
        print(f"phases that failed: {results.errors}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the phases asked for; 0 when all ran, 1 when one failed, 130 on interrupt."""
    opts = parse_options(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    harness = Harness(opts)
    rc = 0
    try:
        rc = run_phases(harness, opts.phase_list())
    except KeyboardInterrupt:
        log("interrupted: stopping what the bench started")
        rc = 130
    finally:
        PROCS.stop_all()
        shutil.rmtree(harness.tmp, ignore_errors=True)
        harness.results.machine.loadavg_at_end = loadavg()
        harness.save()
    report(harness.results, opts.out)
    return rc
