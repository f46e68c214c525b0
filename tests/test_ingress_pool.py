"""`ALERTBRIDGE_INGRESS_PROCESSES=N` (ingress.pool): `python -m ingress` starts N copies of
itself on one port and keeps them running. Real processes: a child killed with -9 is
replaced while the others keep answering; SIGTERM stops every child and exits 0; a
child that cannot listen stops the pool with its exit code; a child that keeps dying
is started again after growing pauses."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from ingress import pool
from tests.ingress_support import alert, all_ready, ingress_env, stored
from tests.support import free_port, python_module

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client

    from tests.support import NatsServer


def _children(parent: int) -> set[int]:
    """The live (not zombie) processes whose parent is `parent`, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # it exited meanwhile
            continue
        if fields[1] == str(parent) and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _until(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def _send_fresh(url: str, first: int, count: int) -> list[int]:
    """`count` alerts, each on a connection of its own (as TradingView sends)."""

    async def one(n: int) -> int:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.post(f"{url}/webhook", content=alert(id=f"pool-{n}"))
            return response.status_code

    return list(await asyncio.gather(*(one(n) for n in range(first, first + count))))


async def test_the_pool_replaces_a_killed_child_and_stops_on_sigterm(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    port = free_port()
    env = ingress_env(nats_server.url, http_port=str(port), ingress_processes="2")
    parent = python_module("ingress", env, tmp_path / "pool.log")
    url = f"http://127.0.0.1:{port}"
    try:
        await _until(lambda: len(_children(parent.pid)) == 2, "two children")
        first = _children(parent.pid)
        # Both ready, not just the one a /readyz met: a child that listens without NATS
        # (it waits for its first connection for a while only) answers 503.
        await all_ready(url, port, first)
        assert await _send_fresh(url, 0, 20) == [200] * 20

        victim = min(first)
        # The pool held still while the other one answers alone: its replacement (started
        # after 0.5 s, a moment a loaded machine can stretch these sends past) would take
        # some of them.
        parent.send_signal(signal.SIGSTOP)
        try:
            os.kill(victim, signal.SIGKILL)
            await _until(lambda: victim not in _children(parent.pid), "the killed child gone")
            assert await _send_fresh(url, 20, 20) == [200] * 20  # the other one answers
        finally:
            parent.send_signal(signal.SIGCONT)

        await _until(lambda: len(_children(parent.pid) - first) == 1, "a new child")
        assert _children(parent.pid) == (first - {victim}) | (_children(parent.pid) - first)
        assert "was killed by signal 9: starting another" in (tmp_path / "pool.log").read_text()
        assert await stored(nc) == 40

        children = _children(parent.pid)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0
        assert not any(_alive(pid) for pid in children)  # none left behind, none orphaned
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(15)


def test_a_child_that_cannot_listen_stops_the_pool_with_its_code(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Someone else holds the port without SO_REUSEPORT: no restart can mend that."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = ingress_env(nats_server.url, http_port=str(port), ingress_processes="2")
        parent = python_module("ingress", env, tmp_path / "pool.log")
        try:
            assert parent.wait(60) == 3
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait(15)
    assert "exited 3: stopping the pool" in (tmp_path / "pool.log").read_text()
    assert _children(parent.pid) == set()


@pytest.mark.parametrize("value", ["-1", "65", "two"])
def test_a_bad_process_count_stops_the_start(value: str, tmp_path: Path) -> None:
    env = ingress_env("nats://127.0.0.1:1", ingress_processes=value)
    proc = python_module("ingress", env, tmp_path / "ingress.log")
    assert proc.wait(30) == 2
    assert "ALERTBRIDGE_INGRESS_PROCESSES" in (tmp_path / "ingress.log").read_text()


async def test_a_child_that_keeps_dying_is_started_again_after_growing_pauses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    starts = tmp_path / "starts"
    script = f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(1)"
    crashing = pool.Pool(1, dict(os.environ), argv=(sys.executable, "-c", script))
    caplog.set_level(logging.WARNING, "ingress.pool")
    running = asyncio.create_task(crashing.run())
    await _until(lambda: starts.exists() and len(starts.read_text()) >= 3, "three starts")
    crashing.stop()
    assert await asyncio.wait_for(running, 30) == 0
    pauses = [r.getMessage().rpartition(" in ")[2] for r in caplog.records]
    assert pauses[:2] == ["0.5 s", "1.0 s"], pauses  # each death young: twice the wait
    assert all("exited 1: starting another" in r.getMessage() for r in caplog.records)


async def test_stop_kills_a_child_that_ignores_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ready = tmp_path / "ready"
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(ready)!r}, 'w').close(); time.sleep(600)"
    )
    monkeypatch.setattr(pool, "STOP_GRACE", 0.5)
    stubborn = pool.Pool(1, dict(os.environ), argv=(sys.executable, "-c", script))
    running = asyncio.create_task(stubborn.run())
    await _until(ready.exists, "the child started")
    stubborn.stop()
    assert await asyncio.wait_for(running, 30) == 0
    assert "still running after" in caplog.text and "killed" in caplog.text


def test_the_count_is_the_setting_or_the_usable_cores(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    assert pool.count(3, cpu_max) == 3  # as set, whatever the machine
    cores = len(os.sched_getaffinity(0))
    assert pool.count(0, cpu_max) == min(cores, pool.MAX_AUTO)  # no cgroup file
    cpu_max.write_text("max 100000\n")
    assert pool.count(0, cpu_max) == min(cores, pool.MAX_AUTO)  # no quota
    cpu_max.write_text("150000 100000\n")  # docker run --cpus 1.5
    assert pool.count(0, cpu_max) == min(cores, 2)
    cpu_max.write_text("50000 100000\n")
    assert pool.count(0, cpu_max) == 1
    cpu_max.write_text("garbage\n")
    assert pool.count(0, cpu_max) == min(cores, pool.MAX_AUTO)


def test_a_child_serves_alone_on_a_shared_port() -> None:
    env = pool.child_env({"ALERTBRIDGE_INGRESS_PROCESSES": "0", "OTHER": "kept"})
    assert env == {
        "ALERTBRIDGE_INGRESS_PROCESSES": "1",
        "ALERTBRIDGE_HTTP_REUSE_PORT": "true",
        "OTHER": "kept",
    }
