"""What the machine and the bench's processes are doing: CPU ticks, memory, quiet waits."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, log
from bench.procs import PROCS, run
from bench.results import Machine, Rss

HZ = os.sysconf("SC_CLK_TCK")
CpuSnap = dict[str, list[int]]


def ticks(pid: int) -> int:
    """utime + stime of a process (clock ticks, all threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


class TickSampler:
    """The CPU ticks of some processes, sampled with the wall-clock time in a thread, so
    that the CPU they spent between two wall-clock times (a drain's middle 80 %, known
    only from the events afterwards) can be read back: `between`."""

    def __init__(self, pids: list[int], every: float = 0.05) -> None:
        self._pids = pids
        self._every = every
        self._samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tick-sampler", daemon=True)

    def __enter__(self) -> TickSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        total = 0
        for pid in self._pids:
            with contextlib.suppress(OSError):  # exited: its ticks are no longer counted
                total += ticks(pid)
        self._samples.append((time.time(), total))

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._sample()

    def between(self, t0: float, t1: float) -> float | None:
        """CPU seconds spent between wall-clock times t0 and t1 (None: not sampled)."""
        if not self._samples or t0 < self._samples[0][0] or t1 > self._samples[-1][0]:
            return None
        return (self._at(t1) - self._at(t0)) / HZ

    def _at(self, t: float) -> float:
        """Ticks at wall-clock time t, interpolated between the samples around it."""
        times = [x[0] for x in self._samples]
        i = max(1, bisect_left(times, t))
        (ta, ka), (tb, kb) = self._samples[i - 1], self._samples[i]
        return ka + (kb - ka) * ((t - ta) / (tb - ta) if tb > ta else 0.0)


def rss(pid: int) -> Rss:
    """Resident memory now and at its peak, KiB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return Rss(vm_rss=found["VmRSS"], vm_hwm=found["VmHWM"])


def ours_ticks() -> int:
    """CPU ticks of every process the bench runs now (servers, workers, brokers) and
    of the bench itself with its reaped children (loadgen, natsq, wrk)."""
    total = 0
    for _, proc in PROCS.live:
        with contextlib.suppress(OSError):
            total += ticks(proc.pid)
    own = os.times()
    return total + round((own.user + own.system + own.children_user + own.children_system) * HZ)


def cpu_snap() -> CpuSnap:
    """Each CPU's /proc/stat counters."""
    snap: CpuSnap = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            name, *vals = line.split()
            snap[name] = [int(v) for v in vals]
    return snap


@dataclass(frozen=True)
class CpuDelta:
    """Between two snapshots: busy % per CPU (`cpu0`: ...), steal %, busy ticks (idle,
    iowait and steal excluded)."""

    busy_pct: dict[str, int]
    steal_pct: float
    busy_ticks: int


def cpu_delta(a: CpuSnap, b: CpuSnap) -> CpuDelta:
    """What the CPUs did between snapshot `a` and snapshot `b`."""
    busy_pct: dict[str, int] = {}
    steal = total_all = busy_ticks = 0
    for cpu, before in a.items():
        d = [y - x for x, y in zip(before, b[cpu], strict=False)]
        tot = sum(d)
        idle, iowait, st = d[3], d[4], d[7]
        busy_pct[cpu] = round(100 * (tot - idle - iowait) / tot) if tot else 0
        steal += st
        total_all += tot
        busy_ticks += tot - idle - iowait - st
    steal_pct = round(100 * steal / total_all, 1) if total_all else 0.0
    return CpuDelta(busy_pct, steal_pct, busy_ticks)


def machine_busy_pct() -> int:
    """All CPUs' busy share over the next second, %."""
    a = cpu_snap()
    time.sleep(1)
    d = cpu_delta(a, cpu_snap())
    return round(100 * d.busy_ticks / HZ / (os.cpu_count() or 1))


def wait_quiet(max_wait: float, pct: int) -> int:
    """run-seed-ref.sh's quiet-wait: until all-CPU busy <= pct % over 1 s, or max_wait."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = machine_busy_pct()
        if busy <= pct or time.monotonic() >= deadline:
            return busy
        log(f"machine busy {busy}% (> {pct}%), load {loadavg()}: waiting for a quiet moment")


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def calib_ms(cpu: int) -> int:
    """run-seed-ref.sh's host-speed probe: sha256 of 128 MiB on the server CPU."""
    t0 = time.monotonic()
    subprocess.run(  # noqa: S602 (a fixed pipeline, the reference's own probe, word for word)
        f"head -c 128M /dev/zero | taskset -c {cpu} sha256sum >/dev/null",
        shell=True,
        check=True,
        timeout=60,
    )
    return round((time.monotonic() - t0) * 1000)


def _git(*args: str) -> str:
    done = run(["git", "-C", str(ROOT), *args], timeout=10)
    return done.stdout.decode(errors="replace").strip()


def _proc_line(path: str, prefix: str, default: str) -> str:
    """The rest of the first line of `path` that starts with `prefix`."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :]
    return default


def machine() -> Machine:
    """The machine and checkout the numbers come from."""
    cpu = _proc_line("/proc/cpuinfo", "model name", ":?").split(":", 1)[1].strip()
    mem_kib = _proc_line("/proc/meminfo", "MemTotal:", "0 kB").split()[0]
    return Machine(
        git_head=_git("rev-parse", "--short", "HEAD"),
        git_dirty_product_files=_git(
            "status", "--short", "--", "ingress", "worker", "ops", "contracts"
        ).splitlines(),
        nproc=os.cpu_count(),
        cpu=cpu,
        ram_gib=round(int(mem_kib) / 2**20, 1),
        kernel=os.uname().release,
        python=sys.version.split()[0],
        loadavg_at_start=loadavg(),
        date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
