"""`ALERTBRIDGE_INGRESS_PROCESSES=N`: `python -m ingress` runs N copies of itself on one port.

One Python process serves one core; a burst of fresh connections needs them all
(docs/performance.md). A container publishes one port, so copies cannot come from a
replicas line: this process starts N children (`python -m ingress` with one process
each and `ALERTBRIDGE_HTTP_REUSE_PORT=true`: each binds the port with SO_REUSEPORT and
the kernel spreads the connections), serves nothing itself, and supervises them:

    a child exits or is killed     started again, after a pause that grows while
                                   children keep dying young (a crash loop)
    a child exits 2 or 3           a setting or the port is wrong, and a restart
                                   cannot mend it: the others are stopped, the pool
                                   exits with that code (as a single process would)
    SIGTERM or SIGINT              passed to every child; those still running after
                                   STOP_GRACE are killed; exit 0

`0` means one per core this container may use (its CPU affinity and cgroup quota),
capped at MAX_AUTO. Each child reads the same settings, connects to NATS on its own
and counts its own metrics (a scrape of /metrics reaches one of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ops.platform.settings import PREFIX

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger("ingress.pool")

MAX_AUTO: Final = 8  # past a few cores nats-server's writes, not Python, bound the rate
STOP_GRACE: Final = 10.0  # seconds: uvicorn's graceful shutdown (5 s) and the last PubAcks
# A child that lived less than this died young: the next start waits longer.
YOUNG: Final = 30.0
FIRST_PAUSE: Final = 0.5
MAX_PAUSE: Final = 10.0
# Exit codes of `python -m ingress` that no restart can mend (ingress.__main__).
FATAL: Final = frozenset((2, 3))
CGROUP_CPU_MAX: Final = Path("/sys/fs/cgroup/cpu.max")
INGRESS: Final = (sys.executable, "-m", "ingress")


def count(setting: int, cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """How many processes `ALERTBRIDGE_INGRESS_PROCESSES` asks for (0: one per usable core)."""
    if setting > 0:
        return setting
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    usable = cores or 1
    quota = _cgroup_quota(cpu_max)
    if quota is not None:
        usable = min(usable, quota)
    return max(1, min(usable, MAX_AUTO))


def _cgroup_quota(cpu_max: Path) -> int | None:
    """The cgroup v2 CPU quota in whole cores, rounded up (`docker run --cpus 1.5`: 2);
    None without one."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max" or not (quota.isdigit() and period.isdigit()) or int(period) == 0:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def child_env(env: dict[str, str]) -> dict[str, str]:
    """A child's environment: the pool's, for one process on the shared port."""
    return env | {f"{PREFIX}INGRESS_PROCESSES": "1", f"{PREFIX}HTTP_REUSE_PORT": "true"}


def run(processes: int) -> int:
    """Start and supervise `processes` children until SIGTERM/SIGINT; the exit code."""
    return asyncio.run(_supervise(Pool(processes, child_env(dict(os.environ)))))


async def _supervise(pool: Pool) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, pool.stop)
    return await pool.run()


class Pool:
    """N children of `python -m ingress`, each kept running in its own slot."""

    def __init__(self, processes: int, env: dict[str, str], argv: Sequence[str] = INGRESS) -> None:
        self._processes = processes
        self._env = env
        self._argv = argv
        self._stopping = asyncio.Event()
        self._fatal: int | None = None

    def stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after STOP_GRACE); `run` then returns."""
        self._stopping.set()

    async def run(self) -> int:
        """Until `stop` (exit 0) or a child's fatal exit (its code)."""
        log.info("ingress pool: %d processes on one port", self._processes)
        await asyncio.gather(*(self._keep() for _ in range(self._processes)))
        return self._fatal if self._fatal is not None else 0

    async def _keep(self) -> None:
        """Keep one child running until the pool stops; then stop it."""
        young = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self._argv, env=self._env, stdin=asyncio.subprocess.DEVNULL
            )
            code = await self._watch(proc)
            if code is None:
                return
            if code in FATAL:
                log.error("ingress process %d exited %d: stopping the pool", proc.pid, code)
                self._fatal = code
                self._stopping.set()
                return
            young = young + 1 if time.monotonic() - started < YOUNG else 0
            pause = min(MAX_PAUSE, FIRST_PAUSE * 2 ** max(0, young - 1))
            log.warning(
                "ingress process %d %s: starting another in %.1f s", proc.pid, _how(code), pause
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)

    async def _watch(self, proc: asyncio.subprocess.Process) -> int | None:
        """The child's exit code when it ends by itself; None when the pool stopped it."""
        exited = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait((exited, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not self._stopping.is_set():
            return exited.result()
        _signal(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), STOP_GRACE)
        except TimeoutError:
            log.warning("ingress process %d still running after %.0f s: killed",
                        proc.pid, STOP_GRACE)  # fmt: skip
            _signal(proc, signal.SIGKILL)
            await exited
        return None


def _signal(proc: asyncio.subprocess.Process, signum: signal.Signals) -> None:
    if proc.returncode is None:
        # It may have exited between the check and the signal.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)


def _how(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited {code}"
