"""`just bench` stays runnable: every bench module imports (starting nothing), the entry
point bench/run.sh calls answers --help, each phase in PHASES has its module, and the
typed results keep results.json's layout and render the table. No servers start here."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import msgspec
import pytest

import bench
from bench.cli import parse_options
from bench.options import PHASES
from bench.phases import REGISTRY
from bench.results import AbRound, Machine, RefRound, Results, Throughput
from bench.table import text_table
from tests.support import ROOT


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
    machine = Machine(git_head="0", git_dirty_product_files=[], nproc=2, cpu="cpu", ram_gib=1.0,
                      kernel="k", python="3", loadavg_at_start="0", date_utc="d")  # fmt: skip
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
    assert "1 ingress req/s (median of 2\N{MULTIPLICATION SIGN}15 s, -c64, pinned)" in table
    assert "yes (1.90\N{MULTIPLICATION SIGN})" in table
    assert "variant quiet (X=1)" in table
