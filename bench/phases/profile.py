"""Phase `profile`: py-spy on the ingress under wrk load, then on one worker draining a
backlog into the 20 ms HTTP broker (needs py-spy: see bench/run.sh)."""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING

import msgspec

from bench import pyspy_summary, tools
from bench.common import AB_SECRET, HERE, SYMBOLS_64, BenchError, log
from bench.drain import forwarding_env, start_slow_broker
from bench.procs import PROCS, spawn
from bench.results import Profile
from bench.system import HZ, ticks

if TYPE_CHECKING:
    from pathlib import Path

    from bench.harness import Harness, Running
    from bench.procs import Popen


def run(h: Harness) -> None:
    """The ingress profiled under wrk; then a worker (its failure is noted, not fatal)."""
    pyspy = h.opts.pyspy.split()
    if not pyspy:
        h.results.profile = Profile(skipped="py-spy not available (see bench/run.sh)")
        log("profile: skipped, py-spy not available")
        return
    h.results.profile = ingress(h, pyspy)
    h.save()
    try:
        h.results.profile_worker = worker(h, pyspy)
    except BenchError as exc:
        h.results.profile_worker = Profile(skipped=str(exc))


def ingress(h: Harness, pyspy: list[str]) -> Profile:
    """py-spy on the ingress for `--profile-seconds` while wrk loads it."""
    env = {"SECRET": AB_SECRET, "BENCH_ALERTS_LUA": str(h.lua)}
    script, conns, seconds = HERE / "alerts-ab.lua", h.opts.conns, h.opts.profile_seconds
    with h.running("profile") as started:
        ing = started.the_ingress()
        tools.wrk(h.webhook, 5, conns, env, script, h.out / "profile.warmup.wrk.txt",
                  latency=False)  # fmt: skip
        raw = h.out / "profile.pyspy.txt"
        spy = record(pyspy, ing.pid, seconds, raw)
        time.sleep(0.5)
        f, _ = tools.wrk(h.webhook, seconds + 3, conns, env, script, h.out / "profile.wrk.txt")
        found = summary(h, spy, raw, "profile")
    return msgspec.structs.replace(found, rps_while_profiled=f.rps)


def worker(h: Harness, pyspy: list[str]) -> Profile:
    """py-spy on one worker draining a backlog into the 20 ms HTTP broker."""
    broker = start_slow_broker(h, "profile-worker")
    try:
        with h.running("profile-worker", lambda: forwarding_env(h, 16)) as started:
            return draining_worker(h, pyspy, started)
    finally:
        PROCS.stop(broker)


def draining_worker(h: Harness, pyspy: list[str], started: Running) -> Profile:
    """Fill a backlog through the ingress, then profile one worker draining it."""
    seconds = h.opts.profile_seconds
    h.fill(max(2000, int(seconds * 400)), SYMBOLS_64)
    before = h.streams.executed_count()
    started.workers += h.start_workers("profile-worker", 1, started.env, cpu=1)
    pid = started.workers[0].pid
    raw = h.out / "profile-worker.pyspy.txt"
    t0, tk0 = time.monotonic(), ticks(pid)
    found = summary(h, record(pyspy, pid, seconds, raw), raw, "profile-worker")
    el = time.monotonic() - t0
    return msgspec.structs.replace(
        found,
        worker_cpu_pct=round(100 * (ticks(pid) - tk0) / HZ / el),
        executed_per_s_while_profiled=round((h.streams.executed_count() - before) / el, 1),
    )


def record(pyspy: list[str], pid: int, seconds: int, raw: Path) -> Popen:
    """`py-spy record` of `pid` for `seconds`, raw format, on CPU 1 (in the background)."""
    argv = [*pyspy, "record", "-p", str(pid), "-d", str(seconds), "-r", "100",
            "--full-filenames", "-f", "raw", "-o", str(raw)]  # fmt: skip
    return spawn(["taskset", "-c", "1", *argv], stdout=subprocess.PIPE)


def summary(h: Harness, spy: Popen, raw: Path, tag: str) -> Profile:
    """Wait for py-spy; its profile summarised (TAG.summary.txt), or why there is none."""
    try:
        spy_out, _ = spy.communicate(timeout=h.opts.profile_seconds + 60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy_out, _ = spy.communicate()
    (h.out / f"{tag}.pyspy.log").write_bytes(spy_out or b"")
    if not raw.exists():
        return Profile(skipped=f"py-spy wrote nothing: {(spy_out or b'').decode()[-400:]}")
    s = pyspy_summary.summarise(raw, 25)
    text = pyspy_summary.render(s)
    (h.out / f"{tag}.summary.txt").write_text(text + "\n")
    log(f"{tag}:\n{text}")
    return Profile(**msgspec.structs.asdict(s))
