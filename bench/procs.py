"""Processes and ports: every child by PID, every wait bounded.

All of the bench's subprocesses start through `run` (to the end) or `spawn` (in the
background). Their argv are built in bench/ from fixed tool names (taskset, wrk, npm,
redis-server, redis-cli, git, py-spy, this Python) that run.sh checks and finds on
PATH, so the two S603 suppressions below are the whole of it.

The port primitives are tests/support.py's (`free_port`, `listening`,
`wait_for_port`): one implementation for the tests and the bench.
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
import urllib.request
from typing import IO, TYPE_CHECKING

from bench.common import BenchError
from tests.support import ExitedError, free_port, listening, wait_for_port

if TYPE_CHECKING:
    from pathlib import Path

# free_port and listening are tests/support.py's, used by the bench through here.
__all__ = ["PROCS", "Procs", "free_port", "http", "listening", "nats_sync_config", "run", "spawn"]

Popen = subprocess.Popen[bytes]


def run(
    argv: list[str],
    *,
    timeout: float,
    check: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout: IO[bytes] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool to its end within `timeout`; output captured unless `stdout` is given
    (then stderr goes there too)."""
    return subprocess.run(  # noqa: S603 (argv from fixed tool names: see the module doc)
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE if stdout is None else subprocess.STDOUT,
        timeout=timeout,
        check=check,
    )


def spawn(
    argv: list[str],
    *,
    stdout: IO[bytes] | int,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
) -> Popen:
    """Start a tool in the background, stderr with its stdout, no stdin."""
    return subprocess.Popen(  # noqa: S603 (argv from fixed tool names: see the module doc)
        argv,
        env=env,
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=new_session,
    )


class Procs:
    """Children by PID; stop() ends exactly that PID (TERM, then KILL)."""

    def __init__(self) -> None:
        self.live: list[tuple[str, Popen]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        log_to: Path,
        cwd: Path | None = None,
        cpu: int | None = None,
    ) -> Popen:
        """Start `argv` in its own session, pinned to `cpu` if given, output to `log_to`."""
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]  # taskset execs: the PID is the app's
        with log_to.open("ab") as fh:
            proc = spawn(argv, env=env, cwd=cwd, stdout=fh, new_session=True)
        self.live.append((name, proc))
        return proc

    def stop(self, proc: Popen | None, grace: float = 10.0) -> None:
        """SIGTERM, up to `grace` seconds, then SIGKILL; forget it."""
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.live = [(n, p) for n, p in self.live if p is not proc]

    def stop_all(self) -> None:
        """Stop every child still running, the newest first."""
        for _, proc in reversed(list(self.live)):
            self.stop(proc, grace=5.0)


PROCS = Procs()


def wait_listening(port: int, proc: Popen, what: str, seconds: float = 20) -> None:
    """Until `proc` listens on 127.0.0.1:port; a BenchError if it exits or takes too long."""
    try:
        wait_for_port(port, seconds, proc)
    except ExitedError:
        raise BenchError(f"{what} exited with {proc.returncode} before listening") from None
    except TimeoutError:
        raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {seconds}s") from None


def http(method: str, url: str, body: bytes | None = None, timeout: float = 3) -> tuple[int, bytes]:
    """(status, body) of one request to a loopback server; (0, b"") when none answers."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the bench only speaks to its own loopback servers, not {url}")
    req = urllib.request.Request(url, data=body, method=method)  # noqa: S310 (checked above)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (checked above)
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, bytes(exc.read())
    except (urllib.error.URLError, OSError):
        return 0, b""


def nats_sync_config(directory: Path, sync: str | None = None) -> Path:
    """A config file that sets only the server's fsync policy: `sync`, else as the
    product ships it: ALERTBRIDGE_NATS_SYNC, `always` by default (README "What a 200
    means")."""
    sync = sync or os.environ.get("ALERTBRIDGE_NATS_SYNC", "always")
    path = directory / "sync.conf"
    path.write_text(f"jetstream {{ sync_interval: {sync} }}\n")
    return path
