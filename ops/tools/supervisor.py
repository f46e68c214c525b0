"""`alertbridge up`'s children, kept running: a child that dies is started again.

A child that exits without being asked to (a crash, a `kill -9`, an OOM kill, even a
clean exit 0: each should run until stopped) is started again with the same command
and environment after a backoff: `RestartPolicy.backoff` seconds, doubling with each
crash it had within the window, up to `RestartPolicy.cap`. The others carry on:
nats-server comes back on the same store and ports, where its streams and consumers
are kept (nothing is provisioned again), and the ingress and workers reconnect to it
by themselves, as they do after any outage.

More than `limit` crashes of one child within `window` seconds is a loop a restart
will not end (a bad setting, a port someone else holds): `tend` raises `CrashLoop`,
naming the child, and its last lines say why. A child the stack can do without (Jaeger)
is given up on instead, saying so, and the others run on. Each child's output passes through to
ours line by line (a reader thread per pipe, so a child never blocks on a full pipe)
and its last `LAST_LINES` lines are kept for that message.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from typing import IO, Final

import click

LAST_LINES: Final = 20  # what a crash-loop report shows of the child's output
READER_JOIN: Final = 2.0  # seconds to wait for a dead child's last lines to be read
STDOUT, STDERR = 1, 2  # file descriptors


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a child, and when to give up on it."""

    limit: int = 5  # crashes allowed within `window`; one more stops the stack
    window: float = 300.0  # seconds
    backoff: float = 0.5  # seconds before the first restart, doubling for each recent crash
    cap: float = 30.0  # the longest wait before a restart

    def delay(self, crashes: int) -> float:
        """Seconds to wait before restarting a child that crashed `crashes` times lately."""
        return min(self.cap, self.backoff * 2.0 ** (crashes - 1))


class CrashLoop(Exception):  # noqa: N818 (what happened, not an error of ours)
    """A child crashed more often than the policy allows."""

    def __init__(self, child: Child, policy: RestartPolicy) -> None:
        self.child = child
        lines = "\n".join(f"  | {line}" for line in child.last_lines()) or "  (no output)"
        super().__init__(
            f"{child.name} crashed {len(child.crashes)} time{'s' * (len(child.crashes) > 1)} "
            f"within {policy.window:g}s "
            f"(more than the {policy.limit} allowed: --restart-limit, --restart-window); "
            f"its last {LAST_LINES} lines:\n{lines}"
        )


class Child:
    """One supervised process: how to start it, the process now, its recent output."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], *, essential: bool = True
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.essential = essential  # whether its crash loop stops the stack
        self.lines: deque[str] = deque(maxlen=LAST_LINES)
        self.crashes: deque[float] = deque()  # monotonic times, those within the window
        self.restart_at: float | None = None  # set while it waits for its restart
        self.proc = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        """Start the process (again), its output passed through to ours."""
        # Its own session, so Ctrl-C in the terminal reaches only `up`, which stops it.
        proc = subprocess.Popen(  # noqa: S603 (our own commands)
            self.argv, env=self.env, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None  # noqa: S101 (PIPE above)
        # To our own file descriptors 1 and 2, whatever `sys.stdout` is at the moment.
        self._readers = [
            _pump(proc.stdout, STDOUT, self.lines, self.name),
            _pump(proc.stderr, STDERR, self.lines, self.name),
        ]
        return proc

    def last_lines(self) -> list[str]:
        """Its last lines of output (both streams), once a dead child's pipes are read."""
        for reader in self._readers:
            reader.join(READER_JOIN)
        return list(self.lines)

    def stop(self, grace: float) -> None:
        """SIGTERM, and SIGKILL if it is still there after `grace` seconds."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            click.echo(f"{self.name} did not stop in {grace:g}s; killing it", err=True)
            self.proc.kill()
            self.proc.wait()


def tend(children: list[Child], policy: RestartPolicy, now: float) -> None:
    """One round: note each child that died, restart those whose wait is over.

    In start order, so nats-server comes back before the processes that use it.
    Raises CrashLoop for a child that died more than `policy.limit` times lately.
    """
    for child in children:
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.restart_at = None
                child.proc = child.start()
            continue
        code = child.proc.poll()
        if code is None:
            continue
        child.crashes.append(now)
        while child.crashes[0] < now - policy.window:
            child.crashes.popleft()
        if len(child.crashes) > policy.limit:
            if child.essential:
                raise CrashLoop(child, policy)
            child.restart_at = math.inf
            click.echo(
                f"{CrashLoop(child, policy)}\ngiving up on {child.name}; the rest runs on", err=True
            )
            continue
        delay = policy.delay(len(child.crashes))
        child.restart_at = now + delay
        click.echo(
            f"{child.name} (pid {child.proc.pid}) {_how(code)}; restarting it in {delay:g}s "
            f"(crash {len(child.crashes)} of {policy.limit} allowed within {policy.window:g}s)",
            err=True,
        )


def _how(code: int) -> str:
    """How a process ended, in words: its signal's name, or its exit code."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with {code}" + (" without being asked to" if code == 0 else "")


def _pump(source: IO[bytes], fd: int, lines: deque[str], name: str) -> threading.Thread:
    """Copy `source` to our `fd` line by line, keeping the last lines, until it closes."""

    def copy() -> None:
        with source:
            for raw in iter(source.readline, b""):
                lines.append(raw.decode(errors="replace").rstrip())
                # Our own output gone (e.g. `up | head` ended): keep draining the child.
                with contextlib.suppress(OSError):
                    _write_all(fd, raw)

    reader = threading.Thread(target=copy, name=f"{name}-output", daemon=True)
    reader.start()
    return reader


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
