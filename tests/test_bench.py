"""`just bench` stays runnable: every bench module imports (starting nothing), the entry
point bench/run.sh calls answers --help, each phase in PHASES has its module, and the
typed results keep results.json's layout and render the table, and a reference run
that leaves no result row is named and run again. No servers start here."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import msgspec
import pytest

import bench
from bench.cli import parse_options
from bench.common import BenchError
from bench.natsq import Pending
from bench.options import PHASES
from bench.phases import REGISTRY
from bench.phases.throughput import REF_ATTEMPTS, NoRowError, ref_round, ref_row
from bench.results import (
    AbRound,
    Burst,
    BurstResult,
    Ceiling,
    Machine,
    RefRound,
    Results,
    Throughput,
)
from bench.results_worker import E2E, DrainResult, LoadSummary, WorkerLevel, WorkerPhase
from bench.table import text_table
from tests.support import ROOT

if TYPE_CHECKING:
    from bench.harness import Harness


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(bench.__path__, "bench.")]


@pytest.mark.parametrize("name", _modules())
def test_every_bench_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_every_phase_has_its_module_in_order() -> None:
    assert tuple(REGISTRY) == PHASES
    for phase, run in REGISTRY.items():
        assert run.__module__ == f"bench.phases.{phase}"


def test_the_entry_point_run_sh_calls_answers_help() -> None:
    # As bench/run.sh runs it: a script in bench/, where bench.py could shadow the package.
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--help"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    text = done.stdout.decode()
    assert all(phase in text for phase in PHASES)
    assert "--variant" in text


def test_options_parse_and_refuse_unknown_phases(capsys: pytest.CaptureFixture[str]) -> None:
    opts = parse_options(
        ["--ref-dir", "r", "--out", "o", "--e2e-sweep", "100,300", "--variant", "q:A=1,B=2"]
    )
    assert opts.phase_list() == list(PHASES)
    assert (opts.e2e_sweep, opts.variants) == ([100, 300], {"q": {"A": "1", "B": "2"}})
    with pytest.raises(SystemExit):
        parse_options(["--ref-dir", "r", "--out", "o", "--phases", "throughput,nope"])
    assert "unknown phases: ['nope']" in capsys.readouterr().err


def _ref(rps: str) -> RefRound:
    """A results.tsv row as run-seed-ref.sh writes it: text, `na` where it has no number."""
    row = dict.fromkeys(RefRound.__struct_fields__, "1")
    return msgspec.convert({**row, "rps": rps, "check": "OK", "noise": "ok", "rc": 0}, RefRound)


def _ab(rps: float, check: str = "OK") -> AbRound:
    return AbRound(
        rep=1, rps=rps, p50_ms=1.0, p90_ms=2.0, p99_ms=3.0, max_ms=4.0, non2xx=0,
        requests=10, fresh_acks=10, dupe_acks=0, sent_unique=10, stored=10,
        stream_messages=10, stream_unique_ids=10, doubled=0, inflight_at_cutoff=0,
        check=check, app_cpu_pct=90, store_cpu_pct=30, wrk_cpu_pct=20, other_cpu_pct=1,
        cpu0_busy_pct=99, cpu1_busy_pct=50, steal_pct=0.0, pre_run_busy_pct=2, calib_ms=400,
        srv_cpu_us_per_req=80, noise="ok", loadavg="0 0 0",
    )  # fmt: skip


def test_results_keep_their_json_layout_and_make_the_table() -> None:
    opts = parse_options(["--ref-dir", "r", "--out", "o", "--variant", "quiet:X=1"])
    machine = _machine()
    throughput = Throughput(
        reference=[_ref("1000"), _ref("na")],
        alertbridge=[_ab(2000.0), _ab(1800.0, "FAIL")],
        variants={"quiet": [_ab(2100.0)]},
    )
    throughput.finish()
    results = Results(machine=machine, settings=opts, throughput=throughput)
    layout = json.loads(json.dumps(results.to_builtins()))
    assert list(layout["throughput"]) == ["reference", "alertbridge", "alertbridge[quiet]"]
    assert layout["throughput_reference_median"]["rps"] == 1000.0  # "na" has no number
    assert layout["throughput_alertbridge_median"]["rps"] == 1900.0
    assert layout["throughput_alertbridge_checks"] == ["OK", "FAIL"]
    assert layout["throughput_alertbridge[quiet]_median"]["rps"] == 2100.0
    assert layout["settings"]["out"] == "o"
    table = text_table(results)
    assert "1 ingress req/s, 1 s level (Redis everysec | sync 1s; median of 2" in table
    assert "yes (1.90\N{MULTIPLICATION SIGN})" in table  # parity at the one-second level
    assert "fsync level" not in table  # not run: no row
    assert "variant quiet (X=1)" in table


def test_the_table_judges_the_fsync_level_and_the_stripped_floor() -> None:
    """Issue 19's rows: the fsync pair's ratio, the ingress against 0.9x nats-server's
    fsynced ceiling, and the shipped webhook's CPU per request against the floor's."""
    opts = parse_options(["--ref-dir", "r", "--out", "o"])
    machine = _machine()
    throughput = Throughput(
        reference=[_ref("1000")], alertbridge=[_ab(900.0)],
        reference_fsync=[_ref("1000")], alertbridge_fsync=[_ab(1900.0)],
        stripped=[_ab(1800.0)],  # 90 % of a core at 1,800/s: 500 µs; shipped 1,000 µs
        ceiling=[Ceiling(published=2000, seconds=1.0, per_s=2000.0, store_cpu_pct=50)],
        ceiling_shared=[Ceiling(published=1600, seconds=1.0, per_s=1600.0, store_cpu_pct=40)],
    )  # fmt: skip
    throughput.finish()
    table = text_table(Results(machine=machine, settings=opts, throughput=throughput))
    lines = table.splitlines()
    assert "NO (0.90\N{MULTIPLICATION SIGN})" in next(v for v in lines if "1 s level" in v)
    ceiling = next(v for v in lines if "fsynced publishes/s" in v)
    assert "yes (0.95\N{MULTIPLICATION SIGN})" in ceiling  # 1,900 of 2,000
    shared = next(v for v in lines if "client on nats-server's CPU" in v)
    assert "1,600" in shared and "(ingress 1.19\N{MULTIPLICATION SIGN})" in shared  # reported
    floor = next(v for v in lines if "shipped vs stripped" in v)
    assert "1,000 vs 500" in floor and "NO (2.00\N{MULTIPLICATION SIGN})" in floor
    saved = msgspec.json.decode(msgspec.json.encode(
        Results(machine=machine, settings=opts, throughput=throughput).to_builtins()))  # fmt: skip
    assert [c["per_s"] for c in saved["throughput_ceiling"]] == [2000.0]  # results.json
    assert [c["per_s"] for c in saved["throughput_ceiling_shared"]] == [1600.0]


def _machine() -> Machine:
    return Machine(git_head="0", git_dirty_product_files=[], nproc=2, cpu="cpu", ram_gib=1.0,
                   kernel="k", python="3", loadavg_at_start="0", date_utc="d")  # fmt: skip


def _e2e(p99: float, mx: float, *, took: float = 1000.0, all_executed: bool = True) -> E2E:
    """A run at 1,000/s; `p99`, `mx`: over every alert (a warm-up-trimmed figure below)."""
    load = msgspec.convert(
        {"mode": "paced", "sent": 30_000, "sent_dup_ids": 0, "answered": 30_000,
         "status": {"200": 30_000}, "fresh_2xx": 30_000, "duplicate_2xx": 0,
         "accepted_unique_ids": 30_000, "errors": {}, "p50_ms": 1.0, "p90_ms": 2.0,
         "p99_ms": 3.0, "max_ms": 4.0, "over_3s": 0, "send_span_s": 30.0, "elapsed_s": 30.0,
         "achieved_rps": took, "peak_concurrency": 32, "id_prefix": "x", "wall_s": 30.0},
        LoadSummary,
    )  # fmt: skip
    backlog = Pending(consumers=16, num_pending=0, num_ack_pending=0)
    return E2E(executed=30_000, already_done=0, latency_p50_ms=2.0, latency_p99_ms=1.0,
               latency_max_ms=1.0, latency_all_p99_ms=p99, latency_all_max_ms=mx, rate=1000,
               seconds=30, backlog_at_end_of_load=backlog, all_executed=all_executed,
               worker_cpu_pct=40, pre_busy_pct=1, load=load)  # fmt: skip


def _drain(rate: float, worker_us: int = 200, *, all_executed: bool = True) -> DrainResult:
    return DrainResult(label="d", workers=1, alerts=30_000, fill_rps=None,
                       all_executed=all_executed, wall_s=10.0, pre_busy_pct=1, other_cpu_pct=1,
                       noise="ok", worker_cpu_pct_sum=90, executed=30_000, rate_per_s=rate,
                       rate_mid80_per_s=rate, server_cpu_us_per_alert=100,
                       worker_cpu_us_per_alert=worker_us,
                       server_steady_cpu_us_per_alert=90)  # fmt: skip


def _worker_table(levels: dict[str, WorkerLevel]) -> list[str]:
    opts = parse_options(["--ref-dir", "r", "--out", "o"])
    throughput = Throughput(
        reference=[_ref("1000")], alertbridge=[_ab(4000.0)],
        reference_fsync=[_ref("1000")], alertbridge_fsync=[_ab(1000.0)],
    )  # fmt: skip
    throughput.finish()
    worker = WorkerPhase(levels=levels)
    results = Results(machine=_machine(), settings=opts, throughput=throughput, worker=worker)
    return text_table(results).splitlines()


def _row(lines: list[str], start: str, n: int = 0) -> str:
    return [v for v in lines if v.strip().startswith(start)][n]


def test_the_table_judges_the_worker_against_the_ingress_at_the_same_level() -> None:
    """Issue 19's worker rows: the drain against the ingress's rate at the same fsync level
    of the same run; the floor against the shipped worker."""
    lines = _worker_table({
        "1s": WorkerLevel(sync="1s", paper_64_symbols=_drain(3000.0, 300),
                          paper_1_symbol=_drain(800.0), stripped_64_symbols=_drain(9000.0, 100)),
        "always": WorkerLevel(sync="always", paper_64_symbols=_drain(1200.0)),
    })  # fmt: skip
    drains = [v for v in lines if "drain rate, paper broker, 64 symbols" in v]
    assert "sync 1s" in drains[0] and "NO (0.75\N{MULTIPLICATION SIGN})" in drains[0]
    assert "sync always" in drains[1] and "yes (1.20\N{MULTIPLICATION SIGN})" in drains[1]
    floor = next(v for v in lines if "shipped vs floor" in v)
    assert "300 vs 100 (3.00\N{MULTIPLICATION SIGN}); 90" in floor  # shipped first
    assert WorkerPhase(levels={"1s": WorkerLevel(sync="1s", paper_64_symbols=_drain(1.0))}
                       ).paper_64_symbols is not None  # fmt: skip


def test_a_drain_that_did_not_finish_is_not_met() -> None:
    lines = _worker_table({"always": WorkerLevel(
        sync="always", paper_64_symbols=_drain(5000.0, all_executed=False))})  # fmt: skip
    drain = next(v for v in lines if "drain rate, paper broker, 64 symbols" in v)
    assert "NO (not all executed)" in drain


def test_the_tail_is_judged_row_by_row_in_each_run_at_the_one_second_level() -> None:
    """p99 and max are judged apart, on every alert; the fsync level's run is reported."""
    lines = _worker_table({
        "1s": WorkerLevel(sync="1s", e2e_runs=[_e2e(8.0, 40.0), _e2e(9.0, 51.0)]),
        "always": WorkerLevel(sync="always", e2e_runs=[_e2e(900.0, 2000.0)]),
    })  # fmt: skip
    assert "8.0 / 9.0" in _row(lines, "p99 ms") and _row(lines, "p99 ms").endswith("yes")
    assert "40.0 / 51.0" in _row(lines, "max ms") and _row(lines, "max ms").endswith("NO")
    assert _row(lines, "p99 ms", 1).rstrip().endswith("reported")  # `always`: not judged


@pytest.mark.parametrize(
    "run", [_e2e(5.0, 20.0, took=900.0), _e2e(5.0, 20.0, all_executed=False)],
    ids=["took-less-than-offered", "not-all-executed"],
)  # fmt: skip
def test_a_run_that_did_not_take_the_rate_or_finish_is_not_met(run: E2E) -> None:
    lines = _worker_table({"1s": WorkerLevel(sync="1s", e2e_runs=[_e2e(5.0, 20.0), run])})
    assert _row(lines, "p99 ms").endswith("NO") and _row(lines, "max ms").endswith("NO")


@pytest.mark.parametrize(
    ("rates", "verdict"), [((600.0, 650.0, 580.0), "yes"), ((600.0, 640.0, 500.0), "NO")]
)
def test_scaling_is_met_while_the_rate_does_not_fall_as_workers_are_added(
    rates: tuple[float, float, float], verdict: str
) -> None:
    """Issue 19, point 4: each count of workers within 0.95x of one worker's rate."""
    drains = [msgspec.structs.replace(_drain(v), workers=k, partitions=64, symbols=64)
              for k, v in zip((1, 2, 4), rates, strict=True)]  # fmt: skip
    results = Results(machine=_machine(), settings=parse_options(["--ref-dir", "r", "--out", "o"]),
                      scaling=drains)  # fmt: skip
    lines = text_table(results).splitlines()
    row = next(v for v in lines if "1 / 2 / 4 workers (64 partitions" in v)
    assert row.rstrip().endswith(verdict)
    assert _row(lines, "nats-server CPU").rstrip().endswith("yes")  # 90 µs each: flat


def _burst(stored: int, accepted: int, doubled: int = 0) -> BurstResult:
    return msgspec.convert(
        {"mode": "burst", "sent": 10_000, "sent_dup_ids": 500, "answered": 10_000,
         "status": {"200": accepted, "503": 10_000 - accepted}, "fresh_2xx": accepted,
         "duplicate_2xx": 0, "accepted_unique_ids": accepted, "errors": {}, "p50_ms": 1.0,
         "p90_ms": 2.0, "p99_ms": 2300.0, "max_ms": 2400.0, "over_3s": 0, "send_span_s": 1.0,
         "elapsed_s": 3.0, "achieved_rps": None, "peak_concurrency": 8000, "id_prefix": "b",
         "wall_s": 3.0, "stored": stored, "stored_unique_ids": stored, "doubled": doubled,
         "pre_busy_pct": 0, "ingresses": 2},
        BurstResult,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("stored", "accepted", "doubled", "verdict"),
    [(9_500, 72, 0, "yes"), (60, 72, 0, "NO"), (9_500, 72, 3, "NO")],
    ids=["503s-stored-for-the-resend", "a-200-not-stored", "doubled"],
)  # fmt: skip
def test_the_fsync_burst_is_judged_on_every_200_stored_and_none_doubled(
    stored: int, accepted: int, doubled: int, verdict: str
) -> None:
    """At `always` most of a burst may be answered 503 and still be stored (TradingView
    resends a 503 and finds it): not a loss. A 200 not stored, or a double, is."""
    results = Results(machine=_machine(), settings=parse_options(["--ref-dir", "r", "--out", "o"]),
                      burst=Burst(alertbridge=_burst(9_500, 9_500),
                                  alertbridge_fsync=_burst(stored, accepted, doubled)))  # fmt: skip
    row = next(v for v in text_table(results).splitlines() if "answered 200 ≤ stored" in v)
    assert row.rstrip().endswith(verdict)


# --- the reference's result row (bench.phases.throughput.ref_row, ref_round) -------------

# results.tsv's header as run-seed-ref.sh writes it: our names but two.
_TSV_NAMES = {"stored": "llen_alerts", "store_cpu_pct": "redis_cpu_pct"}
_TSV_HEADER = "\t".join(
    _TSV_NAMES.get(f, f) for f in RefRound.__struct_fields__ if f not in ("rc", "run_dir")
)


def _tsv_row(rps: str) -> str:
    return "\t".join(rps if name == "rps" else "7" for name in _TSV_HEADER.split("\t"))


def test_a_reference_row_is_read_in_our_names(tmp_path: Path) -> None:
    run = tmp_path / "out" / "20260101T000000Z-seed-ref-fsync-pinned"
    run.mkdir(parents=True)
    (run / "results.tsv").write_text(f"{_TSV_HEADER}\n{_tsv_row('4474.44')}\n")
    row = ref_row(tmp_path / "out", tmp_path / "ref.log", 0)
    assert (row.rps, row.stored, row.store_cpu_pct, row.rc) == ("4474.44", "7", "7", 0)
    assert row.run_dir == str(run)


def test_a_reference_run_without_a_row_names_its_log(tmp_path: Path) -> None:
    """The crash of issue 19's quick bench: a results.tsv holding only its header."""
    log_path = tmp_path / "ref-fsync-round1.log"
    with pytest.raises(NoRowError, match="exit 1") as none:
        ref_row(tmp_path / "nothing", log_path, 1)
    assert "left no results.tsv" in str(none.value) and str(log_path) in str(none.value)
    (tmp_path / "out" / "run").mkdir(parents=True)
    (tmp_path / "out" / "run" / "results.tsv").write_text(_TSV_HEADER + "\n")
    with pytest.raises(NoRowError) as header_only:
        ref_row(tmp_path / "out", log_path, 1)
    assert "holds only the header" in str(header_only.value)
    assert str(log_path) in str(header_only.value)


def test_a_reference_row_in_another_layout_is_no_retry(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.tsv").write_text("rep\trps\n1\t10\n")
    with pytest.raises(BenchError, match="not the columns expected") as exc:
        ref_row(tmp_path, tmp_path / "ref.log", 0)
    assert not isinstance(exc.value, NoRowError)


# A stand-in run-seed-ref.sh: its first `fail_first` runs write the header and exit 1
# with no message (as the real one does when `cat /proc/*/stat` loses a race); the
# next writes a row.
_FAKE_REF = """#!/usr/bin/env bash
set -eu
while [ $# -gt 0 ]; do case "$1" in --out) out="$2"; shift 2 ;; *) shift ;; esac; done
n=$(( $(cat "$(dirname "$0")/runs" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$(dirname "$0")/runs"
mkdir -p "$out/run"; printf '%s\\n' "$HEADER" > "$out/run/results.tsv"
[ "$n" -gt "$FAIL_FIRST" ] || exit 1
printf '%s\\n' "$ROW" >> "$out/run/results.tsv"
"""


@pytest.mark.parametrize(("fail_first", "runs"), [(0, 1), (2, 3)])
def test_a_reference_round_runs_again_when_it_left_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_first: int, runs: int
) -> None:
    harness = _fake_reference(tmp_path, monkeypatch, fail_first)
    row = ref_round(harness, 1, "fsync")
    assert row.rps == "4474.44" and row.rc == 0
    assert (tmp_path / "ref" / "runs").read_text().strip() == str(runs)
    logs = sorted(p.name for p in (tmp_path / "out").glob("*.log"))
    expected = ["ref-fsync-round1.log"] + [
        f"ref-fsync-round1-attempt{n}.log" for n in range(2, runs + 1)
    ]
    assert logs == sorted(expected)


def test_a_reference_round_that_never_leaves_a_row_stops_the_bench(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = _fake_reference(tmp_path, monkeypatch, fail_first=REF_ATTEMPTS)
    with pytest.raises(BenchError, match=r"reference round 1 \(Redis fsync\).*only the header"):
        ref_round(harness, 1, "fsync")
    assert (tmp_path / "ref" / "runs").read_text().strip() == str(REF_ATTEMPTS)


def _fake_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_first: int) -> Harness:
    ref = tmp_path / "ref"
    ref.mkdir()
    script = ref / "run-seed-ref.sh"
    script.write_text(_FAKE_REF)
    script.chmod(0o755)
    monkeypatch.setenv("HEADER", _TSV_HEADER)
    monkeypatch.setenv("ROW", _tsv_row("4474.44"))
    monkeypatch.setenv("FAIL_FIRST", str(fail_first))
    opts = parse_options(["--ref-dir", str(ref), "--out", str(tmp_path / "out")])
    (tmp_path / "out").mkdir()
    # ref_round reads only the options and the output folder: a Harness would start servers.
    return cast("Harness", SimpleNamespace(opts=opts, out=tmp_path / "out"))


@pytest.mark.parametrize(("slowest", "verdict"), [(480, "yes (1.20"), (600, "NO (1.50")])
def test_the_table_says_when_the_host_itself_ran_at_different_speeds(
    slowest: int, verdict: str
) -> None:
    """The host-speed probe before each run: a spread past 1.25x is flagged (a VM slowed
    by its host, which neither the load nor the steal counters show)."""
    opts = parse_options(["--ref-dir", "r", "--out", "o"])
    ref = msgspec.structs.replace(_ref("1000"), calib_ms="450")
    slow = msgspec.structs.replace(_ab(950.0), calib_ms=slowest)
    throughput = Throughput(reference=[ref], alertbridge=[_ab(900.0), slow])
    throughput.finish()
    table = text_table(Results(machine=_machine(), settings=opts, throughput=throughput))
    row = next(v for v in table.splitlines() if "host-speed probe" in v)
    assert f"400 / {slowest}" in row and verdict in row, row
