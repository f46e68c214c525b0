"""`alertbridge up` as a user runs it (a process, real HTTP), for the tests that drive it."""

from __future__ import annotations

import json
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support import ROOT, SAMPLES, free_port

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")


@dataclass
class Up:
    """A running `alertbridge up`."""

    proc: subprocess.Popen[str]
    var: Path
    http: int
    nats: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ALERTBRIDGE_VAR": str(self.var),
               "ALERTBRIDGE_NATS_URL": f"nats://127.0.0.1:{self.nats}"}  # fmt: skip
        return subprocess.run(
            [ALERTBRIDGE, *args], env=env, capture_output=True, text=True, timeout=30, check=False
        )

    def stop(self) -> int:
        """Ctrl-C, as a user would."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(45)


def launch(
    var: Path,
    http: int,
    nats: int,
    monitor: int,
    *,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    tty: bool = False,
) -> Up:
    """Start `alertbridge up` on these ports with `args`, its output (both streams) in a file.

    `tty`: its output goes to a terminal (a pty, copied to the file), as when a person runs it.
    """
    log = var.parent / f"up-{time.monotonic_ns()}.log"
    full_env = {
        **os.environ,
        "ALERTBRIDGE_VAR": str(var),
        "ALERTBRIDGE_SECRETS": "7f3c9a1e,abcdefgh",  # the samples' own, plus var/secret
        # The samples carry their 2025 `timenow`: the stale-alert guard (tested in
        # test_worker.py) would rightly expire them.
        "ALERTBRIDGE_MAX_ALERT_AGE": "0",
        "XDG_CONFIG_HOME": str(var.parent / "config"),  # the nats CLI context goes here
        **(env or {}),
    }
    # One ingress (its child is `ingress`) and a console on a free port, unless asked.
    defaults = [] if "--ingress" in args else ["--ingress", "1"]
    if "--console-port" not in args:
        defaults += ["--console-port", str(free_port())]
    argv = [ALERTBRIDGE, "up", "--port", str(http), "--nats-port", str(nats),
            "--monitor-port", str(monitor), *defaults, *args]  # fmt: skip
    with log.open("w") as out:
        if not tty:
            proc = subprocess.Popen(
                argv, env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True
            )
            return Up(proc, var, http, nats, log)
    terminal, side = pty.openpty()
    proc = subprocess.Popen(argv, env=full_env, cwd=ROOT, stdout=side, stderr=side, text=True)
    os.close(side)
    threading.Thread(target=_copy_terminal, args=(terminal, log), daemon=True).start()
    return Up(proc, var, http, nats, log)


def _copy_terminal(terminal: int, log: Path) -> None:
    """Copy what reaches the terminal to `log` until the last writer has closed it."""
    with log.open("ab") as out:
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # EIO: nobody holds the terminal's other side any more
                break
            if not chunk:
                break
            out.write(chunk)
            out.flush()
    os.close(terminal)


def start(var: Path, http: int, nats: int, monitor: int) -> Up:
    """`launch`, and wait until the ingress is ready."""
    up = launch(var, http, nats, monitor)
    wait_ready(up, f"{up.url}/readyz", timeout=60)
    return up


def wait_ready(up: Up, url: str, timeout: float = 30) -> None:
    """Wait until `url` answers 200, while `up` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.proc.poll() is None, up.log.read_text()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{up.log.read_text()}")


Row = tuple[str, str, float, str, float | None, float | None]


def paper_orders(var: Path) -> list[Row]:
    with sqlite3.connect(var / "paper.db") as db:
        return db.execute(
            "SELECT symbol, side, quantity, order_type, take_profit, stop_loss FROM orders"
            " ORDER BY seq"
        ).fetchall()


def wait_for_orders(var: Path, n: int, timeout: float = 30) -> list[Row]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (var / "paper.db").exists() and len(rows := paper_orders(var)) >= n:
            return rows
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {n} paper orders after {timeout}s")


def wait_for_json(up: Up, n: int, *args: str, timeout: float = 30) -> list[dict[str, Any]]:
    """`alertbridge <args>` (a `--json` command) once it prints `n` objects or more: the
    views lag the streams by the projector's batch."""
    deadline = time.monotonic() + timeout
    while True:
        result = up.cli(*args)
        if result.returncode == 0:
            found = [json.loads(line) for line in result.stdout.splitlines()]
            if len(found) >= n:
                return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"`alertbridge {' '.join(args)}` after {timeout}s: {result}")
        time.sleep(0.3)


def post_sample(url: str, name: str) -> httpx.Response:
    raw = (SAMPLES / name).read_bytes()
    kind = "application/json" if name.endswith(".json") else "text/plain; charset=utf-8"
    return httpx.post(f"{url}/webhook", content=raw, headers={"Content-Type": kind}, timeout=5)
