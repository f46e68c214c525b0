"""Several ingress processes on one port (`alertbridge up --ingress N`): the kernel
spreads fresh connections over them (SO_REUSEPORT), each stores what it answers 200,
and the others go on when one stops. Without the setting a second one cannot start."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

from tests.ingress_support import alert, all_ready, connects_to, ingress_env, stored, wait_ready
from tests.support import free_port, python_module

if TYPE_CHECKING:
    from pathlib import Path

    from nats.aio.client import Client

    from tests.support import NatsServer


async def _send_fresh(url: str, first: int, count: int) -> list[int]:
    """`count` alerts, each on a connection of its own (as TradingView sends)."""

    async def one(n: int) -> int:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.post(f"{url}/webhook", content=alert(id=f"scale-{n}"))
            return response.status_code

    return list(await asyncio.gather(*(one(n) for n in range(first, first + count))))


async def test_two_ingress_processes_share_a_port(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    port = free_port()
    env = ingress_env(
        nats_server.url,
        http_port=str(port),
        http_reuse_port="true",
        log_level="DEBUG",
        log_format="json",
    )
    logs = [tmp_path / "ingress-0.log", tmp_path / "ingress-1.log"]
    procs = [python_module("ingress", env, log) for log in logs]
    url = f"http://127.0.0.1:{port}"
    try:
        await all_ready(url, port, [proc.pid for proc in procs])
        statuses = await _send_fresh(url, 0, 80)
        assert statuses == [200] * 80
        assert await stored(nc) == 80
        served = [log.read_text().count(" accepted (duplicate=False)") for log in logs]
        assert sum(served) == 80 and min(served) > 0, served  # both took connections

        procs[0].terminate()
        procs[0].wait(15)  # (uvicorn re-raises SIGTERM once it has shut down)
        assert "ingress stopped" in logs[0].read_text()  # gracefully
        statuses = await _send_fresh(url, 80, 20)  # the other one takes them all
        assert statuses == [200] * 20
        assert await stored(nc) == 100
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)


def test_without_reuse_port_a_second_ingress_cannot_start(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    port = free_port()
    env = ingress_env(nats_server.url, http_port=str(port))
    first = python_module("ingress", env, tmp_path / "first.log")
    try:
        asyncio.run(_ready(f"http://127.0.0.1:{port}"))
        second = python_module("ingress", env, tmp_path / "second.log")
        assert second.wait(15) == 3  # uvicorn could not bind: exit 3, nothing served
        assert "address already in use" in (tmp_path / "second.log").read_text().lower()
    finally:
        first.terminate()
        first.wait(15)


async def _ready(url: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        await wait_ready(url, client)


async def test_what_reaches_a_starting_process_is_answered_200_not_503(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    """A process starts answering only once it has connected to NATS (or has waited
    ingress.publisher.FIRST_CONNECT_WAIT for it): what reaches it as it starts is stored,
    a 200, not a 503 that TradingView would resend 5 s later. A paused server (SIGSTOP:
    its socket takes the connection, its handshake waits) holds the connection back for
    half a second, on any machine."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    statuses: list[int] = []

    async def knock(n: int) -> None:  # one alert, tried from before it listens
        async with httpx.AsyncClient(timeout=5) as client:  # one client: cheap retries
            while True:
                try:
                    response = await client.post(f"{url}/webhook", content=alert(id=f"early-{n}"))
                except httpx.ConnectError:
                    await asyncio.sleep(0.01)
                    continue
                statuses.append(response.status_code)
                return

    nats_server.pause()
    proc = python_module("ingress", ingress_env(nats_server.url, http_port=str(port)),
                         tmp_path / "ingress.log")  # fmt: skip
    try:
        early = [asyncio.create_task(knock(n)) for n in range(8)]
        nats_port = int(nats_server.url.rpartition(":")[2])
        deadline = asyncio.get_running_loop().time() + 30
        while not connects_to(proc.pid, nats_port):  # its first connection is on its way
            assert asyncio.get_running_loop().time() < deadline, "never connected"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        nats_server.resume()
        await asyncio.wait_for(asyncio.gather(*early), 20)
        assert statuses == [200] * 8, statuses
        assert await stored(nc) == 8
    finally:
        nats_server.resume()
        proc.terminate()
        proc.wait(15)
