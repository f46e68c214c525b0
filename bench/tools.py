"""The load tools, run to their end: loadgen.py, natsq.py (as a process, pinned), and wrk.
Each one's output is decoded here, at the edge, into a typed value."""

from __future__ import annotations

import os
import resource
import shlex
from typing import TYPE_CHECKING, TypeVar

import msgspec

from bench.common import HERE, PY, BenchError
from bench.procs import run
from bench.results_worker import LoadSummary

if TYPE_CHECKING:
    from pathlib import Path

T = TypeVar("T")


def loadgen(
    mode: str, port: int, secret: str, *extra: str, cpu: int = 1, timeout: float = 900
) -> LoadSummary:
    """bench/loadgen.py pinned to `cpu`: its summary."""
    argv = ["taskset", "-c", str(cpu), PY, str(HERE / "loadgen.py"), mode,
            "--port", str(port), "--secret", secret, *extra]  # fmt: skip
    done = run(argv, timeout=timeout)
    if done.returncode != 0:
        raise BenchError(f"loadgen {mode} failed: {done.stderr.decode()[-800:]}")
    return msgspec.json.decode(done.stdout.strip().splitlines()[-1], type=LoadSummary)


def natsq_cli(url: str, cpu: int, max_seconds: float, args: list[str], answer: type[T]) -> T:
    """`natsq.py URL ARGS` as a process pinned to `cpu` (so its CPU is not the bench's)."""
    argv = ["taskset", "-c", str(cpu), PY, str(HERE / "natsq.py"),
            "--max-seconds", str(max_seconds), url, *args]  # fmt: skip
    done = run(argv, timeout=max_seconds + 60)
    if done.returncode != 0:
        raise BenchError(f"natsq {args[0]} failed: {done.stderr.decode()[-600:]}")
    return msgspec.json.decode(done.stdout, type=answer)


class WrkResult(msgspec.Struct):
    """The parts of alerts.lua's `BENCH key=value ...` line the bench reads (µs)."""

    rps: float
    requests: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    non2xx: int
    fresh: int
    dupe: int
    sent_unique: int


def wrk(
    url: str,
    seconds: int,
    conns: int,
    env_extra: dict[str, str],
    script: Path,
    out: Path,
    *,
    latency: bool = True,
) -> tuple[WrkResult, float]:
    """wrk pinned to CPU 1 with alerts.lua; (its BENCH figures, wrk's CPU seconds)."""
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s",
            *(["--latency"] if latency else []), "-s", str(script), url]  # fmt: skip
    env = dict(os.environ, DUP_EVERY="0", **env_extra)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with out.open("wb") as fh:
        fh.write(("# " + " ".join(shlex.quote(x) for x in argv) + "\n").encode())
        fh.flush()
        done = run(argv, env=env, stdout=fh, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchError(f"wrk failed; see {out}")
    line = next((ln for ln in out.read_text().splitlines() if ln.startswith("BENCH ")), "")
    if not line:
        raise BenchError(f"no BENCH line in {out}")
    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
    try:
        result = msgspec.convert(fields, WrkResult, strict=False)
    except msgspec.ValidationError as exc:
        raise BenchError(f"the BENCH line in {out}: {exc}") from None
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result, cpu
