"""Test helpers: real nats-server processes on free ports, waiting without bare sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from ops.platform import projections
from ops.tools.paths import nats_server_binary

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(__file__).resolve().parent / "samples"
T = TypeVar("T")


# free_port, listening and wait_for_port are also the bench's (bench/procs.py): one
# implementation of "a port nobody uses" and "wait, bounded, until it listens".
def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_stack_port(workers: int = 1) -> int:
    """A port for `alertbridge up --port`, with the ports after it free too: under `up`
    worker *i* serves its health port on --port + 1 + i. (A port chosen alone can have its
    neighbour held by any socket, an outgoing one included: that once failed a test.)"""
    for _ in range(50):
        base = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + 1 + workers):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError("no run of free ports found")


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port now."""
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


class ExitedError(Exception):
    """The process meant to listen exited first."""


def wait_for_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something accepts connections on 127.0.0.1:port (or `proc` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return
        if proc is not None and proc.poll() is not None:
            raise ExitedError(f"exited with {proc.returncode} before listening on {port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


class NatsServer:
    """A real nats-server with JetStream on a free port and a temp store dir.

    `config` runs it with a config file (the flags still override it), `env` adds to
    its environment (the file's `$VAR` references), `log` keeps its log in a file.
    `sync` is its fsync policy, as ALERTBRIDGE_NATS_SYNC says it (README "What a 200
    means"): `always` unless a test says otherwise, as every configuration shipped.
    Without a config file of its own it gets a one-line one that sets just that.
    """

    def __init__(
        self,
        store: Path,
        port: int | None = None,
        args: tuple[str, ...] = (),
        *,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        sync: str = "always",
        monitor: bool = False,
    ) -> None:
        self.store = store
        self.port = port or free_port()
        self._port_chosen = port is None  # ours to change while it never listened
        self.args = args
        if config is None:
            store.mkdir(parents=True, exist_ok=True)
            config = store.parent / f"{store.name}-sync.conf"
            config.write_text("jetstream { sync_interval: $ALERTBRIDGE_NATS_SYNC }\n")
        self.config = config
        self.env = {"ALERTBRIDGE_NATS_SYNC": sync, **(env or {})}
        self.log = log
        self.monitor_port = free_port() if monitor else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        """Start (or restart on the same port and store) and wait until it listens.

        A free port can be taken between choosing it and binding it (by any socket,
        an outgoing one included): a first start that exits early tries another port.
        """
        for attempt in range(3):
            config = ("--config", str(self.config))
            log: tuple[str, ...] = ("--log", str(self.log)) if self.log else ()
            if self.monitor_port is not None:
                log += ("--http_port", str(self.monitor_port))
            self.proc = subprocess.Popen(
                [
                    nats_server_binary(), *config, "--jetstream", "--store_dir", str(self.store),
                    "--addr", "127.0.0.1", "--port", str(self.port), *log, *self.args,
                ],
                env={**os.environ, **self.env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                wait_for_port(self.port, proc=self.proc)
            except ExitedError:
                if not self._port_chosen or attempt == 2:
                    raise
                self.port = free_port()
                continue
            self._port_chosen = False  # it listened: restarts keep this port
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


async def eventually(
    probe: Callable[[], Awaitable[T | None]], within: float = 10.0, interval: float = 0.05
) -> T:
    """Poll `probe` until it returns something other than None, or fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


def projections_or_none(db: Path) -> sqlite3.Connection | None:
    """The projections file read-only, or None while the projector has made neither it nor
    its tables yet (`open_readonly` says so with FileNotFoundError)."""
    try:
        return projections.open_readonly(db)
    except FileNotFoundError:
        return None


def python_module(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `python -m module` as the stack would, output to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def cluster(root: Path, size: int = 3) -> list[NatsServer]:
    """`size` JetStream servers routed into one cluster on loopback (not started)."""
    routes = [free_port() for _ in range(size)]
    route_urls = ",".join(f"nats://127.0.0.1:{p}" for p in routes)
    return [
        NatsServer(
            root / f"n{i}",
            args=(
                "--server_name",
                f"n{i}",
                "--cluster_name",
                "alertbridge",
                "--cluster",
                f"nats://127.0.0.1:{routes[i]}",
                "--routes",
                route_urls,
            ),
        )
        for i in range(size)
    ]


@contextlib.asynccontextmanager
async def serving_aiohttp(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp `app` (a broker's API, as a test speaks it) on 127.0.0.1 on a free
    port; yield its base URL."""
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()
