"""The stack's processes as a test runs them: `python -m worker` in slots to kill -9 and
restart (a restarted one counts as up only once its /readyz says so: connected, streams
there), and `python -m ingress` on a free port."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tests.support import eventually, free_port, python_module

READY_WITHIN = 30.0  # seconds a (re)started worker gets to answer /readyz 200


class Fleet:
    """`n` worker slots; `env_of(slot)` is a slot's environment (its accounts file, say)."""

    def __init__(self, env_of: Callable[[int], dict[str, str]], n: int, logs: Path) -> None:
        self._env_of = env_of
        self._logs = logs
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.up = [False] * n
        self.starts = 0
        self._restarts: set[asyncio.Task[None]] = set()
        self._failed: list[BaseException] = []

    async def start(self) -> None:
        """Start every slot and wait until all are up."""
        await asyncio.gather(*(self._start(slot) for slot in range(len(self.procs))))

    def kill(self, slot: int) -> None:
        """kill -9 the slot's process, wait for it to be gone, and restart it (in a task).

        Synchronous on purpose: when it returns, the process is dead, so a caller that has
        not answered it yet (a broker holding its HTTP answer) knows it never will.
        """
        proc = self.procs[slot]
        assert proc is not None
        self.up[slot] = False
        proc.kill()
        proc.wait(10)
        task = asyncio.get_running_loop().create_task(self._start(slot))
        self._restarts.add(task)
        task.add_done_callback(self._restarted)

    def up_slots(self) -> list[int]:
        """The slots whose current process is up."""
        return [slot for slot, up in enumerate(self.up) if up]

    async def settled(self) -> None:
        """Wait for restarts in progress; raise if one failed."""
        while self._restarts:
            await asyncio.gather(*self._restarts, return_exceptions=True)
        if self._failed:
            raise AssertionError(f"a worker did not come back: {self._failed[0]!r}")

    async def stop(self) -> None:
        """Cancel restarts, SIGTERM every process (SIGKILL after 20 s) and wait for it."""
        for task in list(self._restarts):
            task.cancel()
        await asyncio.gather(*self._restarts, return_exceptions=True)
        running = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _restarted(self, task: asyncio.Task[None]) -> None:
        self._restarts.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._failed.append(exc)

    async def _start(self, slot: int) -> None:
        port = free_port()
        env = {**self._env_of(slot), "ALERTBRIDGE_HEALTH_PORT": str(port)}
        proc = python_module("worker", env, self._logs / f"worker-{slot}.log")
        self.procs[slot] = proc
        self.starts += 1
        await eventually(lambda: _ready(proc, port), within=READY_WITHIN, interval=0.1)
        self.up[slot] = True


@asynccontextmanager
async def ingress_process(env: dict[str, str], log: Path) -> AsyncIterator[str]:
    """`python -m ingress` on a free port, ready (connected, streams there); yields its
    base URL and stops it after."""
    port = free_port()
    proc = python_module("ingress", {**env, "ALERTBRIDGE_HTTP_PORT": str(port)}, log)
    try:
        await eventually(lambda: _ready(proc, port), within=READY_WITHIN, interval=0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _ready(proc: subprocess.Popen[bytes], port: int) -> bool | None:
    if proc.poll() is not None:
        raise AssertionError(f"{proc.args!r} exited with {proc.returncode} before it was ready")
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            answer = await http.get(f"http://127.0.0.1:{port}/readyz")
    except httpx.TransportError:
        return None
    return True if answer.status_code == 200 else None
