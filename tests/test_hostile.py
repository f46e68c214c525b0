"""Hostile input against a real nats-server: shapes the parser must refuse (depth, size,
numbers, encodings), secrets that must not come back, oversized headers, and slow bodies
that must not hold the ingress. Each refusal is a 4xx with a JSON reason and stores nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client

from ingress.app import create_app
from tests.ingress_support import (
    SECRET,
    Process,
    alert,
    ingress_env,
    ingress_process,
    settings,
    stored,
    wait_ready,
)
from tests.support import NatsServer, eventually

Client_ = AsyncTestClient[Any]


async def _ready(client: Client_) -> bool | None:
    return True if (await client.get("/readyz")).status_code == 200 else None


@pytest.fixture
async def client(nats_server: NatsServer, nc: Client) -> AsyncIterator[Client_]:
    async with AsyncTestClient(app=create_app(settings(nats_server.url))) as c:
        await eventually(lambda: _ready(c))
        yield c


def nested(depth: int) -> bytes:
    inner: Any = 1
    for _ in range(depth - 1):
        inner = {"a": inner}
    return json.dumps({"secret": SECRET, "symbol": "X", "side": "buy", "deep": inner}).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (nested(9), "nested deeper than 8 levels"),
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, "nested deeper than 8 levels"),
        (b"[" * 20000, "nested deeper than 8 levels"),
        (alert(extra=list(range(300))), "more than 256 values"),
        (alert(**{f"k{i}": i for i in range(300)}), "more than 256 values"),
        (alert(note="x" * 4097), "a string longer than 4096 characters"),
        (alert(**{"k" * 4097: 1}), "a key longer than 4096 characters"),
        (b'{"symbol":"X","side":"buy","qty":NaN}', "JSON is malformed"),
        (b'{"symbol":"X","side":"buy","qty":Infinity}', "JSON is malformed"),
        (b'{"symbol":"X","side":"buy","qty":1e999}', "Number out of range"),
        (b"\xff\xfe{\x00}\x00", "JSON is malformed"),
        (b'{"symbol":"\xc3\x28","side":"buy"}', "not valid UTF-8"),
        (b"", "Input data was truncated"),
        (b"null", "a JSON object is required"),
    ],
)
async def test_hostile_shapes_are_422_before_the_secret_is_checked(
    client: Client_, nc: Client, body: bytes, reason: str
) -> None:
    response = await client.post("/webhook", content=body)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["ok"] is False and answer["error"] == "invalid alert"
    assert reason in answer["errors"][0]["reason"]
    assert await stored(nc) == 0


async def test_the_limits_admit_what_tradingview_sends(client: Client_, nc: Client) -> None:
    assert (await client.post("/webhook", content=nested(8))).status_code == 200
    many = alert(**{f"k{i}": "v" * 4096 for i in range(10)})  # 256 values, 4096-char strings
    assert (await client.post("/webhook", content=many)).status_code == 200
    assert await stored(nc) == 2


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"qty": 0}, "quantity"),
        ({"qty": -1}, "quantity"),
        ({"qty": "inf"}, "quantity"),
        ({"qty": "nan"}, "quantity"),
        ({"qty": 10**40}, "quantity"),
        ({"qty": True}, "quantity"),
        ({"price": 1e15}, "price"),
        ({"time": 10**40}, "time"),
        ({"symbol": "A" * 65}, "symbol"),
        ({"symbol": "A\nB"}, "symbol"),
        ({"symbol": ""}, "symbol"),
        ({"symbol": " "}, "symbol"),
        ({"symbol": "NASDAQ:AAPL "}, "symbol"),
        ({"account": " "}, "account"),
        ({"id": "x" * 129}, "id"),
        ({"comment": "c" * 257}, "comment"),
        ({"side": ["buy"]}, "side"),
    ],
)
async def test_out_of_range_fields_are_422(
    client: Client_, nc: Client, fields: dict[str, Any], field: str
) -> None:
    response = await client.post("/webhook", content=alert(**fields))
    assert response.status_code == 422, response.text
    assert field in {e["field"] for e in response.json()["errors"]}
    assert await stored(nc) == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"side": SECRET},  # the secret pasted into the wrong field
        {"time": SECRET},
        {"order_type": SECRET},
        {"qty": SECRET},
        {"symbol": SECRET + "\n"},
        {"passphrase": SECRET, "secret": None, "side": "hold"},
    ],
)
async def test_an_error_body_never_repeats_the_secret(
    client: Client_, nc: Client, fields: dict[str, Any]
) -> None:
    response = await client.post("/webhook", content=alert(**fields))
    assert response.status_code == 422, response.text
    assert SECRET not in response.text
    assert await stored(nc) == 0


# --- against a real `python -m ingress` ------------------------------------------------------


@pytest.fixture
def process(nats_server: NatsServer, nc: Client, tmp_path: Path) -> Iterator[Process]:
    env = ingress_env(nats_server.url, body_timeout="2", max_header_bytes="8192")
    with ingress_process(env, tmp_path / "ingress.log") as running:
        yield running


def _request_head(port: int, length: int, extra: str = "") -> bytes:
    return (
        f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


async def test_oversized_headers_are_refused(process: Process, nc: Client) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        url = f"http://127.0.0.1:{process.port}"
        await wait_ready(url, client)
        big = await client.post(f"{url}/webhook", content=alert(), headers={"X-Pad": "p" * 9000})
        assert big.status_code == 431
        assert big.json() == {"ok": False, "error": "request line and headers over 8192 bytes"}
        long_url = await client.post(f"{url}/webhook/{'s' * 9000}", content=alert())
        assert long_url.status_code == 431
        fits = await client.post(f"{url}/webhook", content=alert(), headers={"X-Pad": "p" * 4000})
        assert fits.status_code == 200
    assert await stored(nc) == 1
    # One JSON line per refusal (ingress.refusals), without the path that was too long.
    lines = [json.loads(line) for line in process.output().splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("status") == 431]
    assert [(r["level"], r["source"]) for r in refused] == [("INFO", "127.0.0.1")] * 2
    assert "s" * 100 not in process.output()


async def test_headers_that_never_end_are_capped(process: Process, nc: Client) -> None:
    """Headers that never end: buffering stops at the cap, with a 431."""

    def run() -> bytes:
        with socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock:
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
            sock.sendall(b"".join(b"X-Pad: " + b"p" * 1000 + b"\r\n" for _ in range(9)))
            return _answer(sock)  # no blank line: the headers are still incomplete

    async with httpx.AsyncClient(timeout=5) as client:
        await wait_ready(f"http://127.0.0.1:{process.port}", client)
    answer = await asyncio.to_thread(run)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"), answer[:80]
    assert answer.endswith(b'{"ok":false,"error":"request line and headers over 8192 bytes"}')
    assert await stored(nc) == 0


async def test_a_chunked_body_over_the_cap_is_413(process: Process, nc: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield alert()[:-1]
        for _ in range(80):
            yield b', "pad": "' + b"x" * 1000 + b'"'
        yield b"}"

    async with httpx.AsyncClient(timeout=5) as client:
        url = f"http://127.0.0.1:{process.port}"
        await wait_ready(url, client)
        response = await client.post(f"{url}/webhook", content=chunks())
    assert response.status_code == 413
    assert response.json() == {"ok": False, "error": f"body over {64 * 1024} bytes"}
    assert await stored(nc) == 0


async def test_a_huge_declared_body_is_refused_before_it_is_sent(
    process: Process, nc: Client
) -> None:
    """Over 4x the cap, the 413 comes from the headers alone: nothing is read."""

    def run() -> bytes:
        with socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock:
            sock.sendall(_request_head(process.port, 10 * 1024 * 1024))
            return _answer(sock)

    async with httpx.AsyncClient(timeout=5) as client:
        await wait_ready(f"http://127.0.0.1:{process.port}", client)
    answer = await asyncio.to_thread(run)
    # The body is never sent: a server that read it first could only answer 408 (its
    # body deadline), so the 413 itself shows it came from the headers alone.
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    assert answer.endswith(b'{"ok":false,"error":"body over 65536 bytes"}')
    assert await stored(nc) == 0


class Dripped(NamedTuple):
    """What a dripping client saw."""

    answer: bytes
    elapsed: float  # from the first bytes sent to the end
    closed: bool  # by the server, before the client's own time ran out
    ended_at: float  # time.monotonic() at the end


async def _drip(
    port: int,
    first: bytes,
    drip: bytes,
    seconds: float,
    every: float = 1.0,
    sent: Callable[[], object] = lambda: None,
) -> Dripped:
    """Send `first` (then call `sent`), then `drip` every `every` s (from 0.5 s on) for
    up to `seconds`; what came back, and whether and when the server closed the connection.

    The drips go out half a second off the server's 2 s deadline, so its answer is
    read before the next drip meets a closed socket (which would reset the connection).
    """

    def run() -> Dripped:
        with socket.create_connection(("127.0.0.1", port), timeout=seconds + 5) as sock:
            started = time.monotonic()
            sock.sendall(first)
            sent()
            sock.settimeout(0.1)
            received, next_drip, closed = b"", started + 0.5, False
            while (now := time.monotonic()) - started < seconds:
                if drip and now >= next_drip:
                    with contextlib.suppress(OSError):  # closed under us: read the answer
                        sock.sendall(drip)
                    next_drip += every
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:  # closed by the server
                    closed = True
                    break
                received += chunk
            ended_at = time.monotonic()
            return Dripped(received, ended_at - started, closed, ended_at)

    # A thread of its own: asyncio.to_thread's pool has only cpu + 4 threads, so of
    # 20 slow senders on 2 cores only 6 would be connected at once.
    with ThreadPoolExecutor(max_workers=1) as own:
        return await asyncio.get_running_loop().run_in_executor(own, run)


async def _trickle(port: int, seconds: float, sent: Callable[[], object] = lambda: None) -> Dripped:
    """Headers for a 100-byte body, then a byte a second."""
    return await _drip(port, _request_head(port, 100), b" ", seconds, sent=sent)


async def test_slow_bodies_are_cut_off_and_do_not_hold_the_server(
    process: Process, nc: Client
) -> None:
    url = f"http://127.0.0.1:{process.port}"
    heads: list[None] = []

    async def all_trickling() -> bool | None:
        return True if len(heads) == 20 else None

    async def post(client: httpx.AsyncClient, n: int) -> float:
        response = await client.post(f"{url}/webhook", content=alert(qty=n + 1))
        assert response.status_code == 200
        return time.monotonic()

    async with httpx.AsyncClient(timeout=10) as client:
        await wait_ready(url, client)
        slow = [
            asyncio.create_task(_trickle(process.port, 8.0, sent=lambda: heads.append(None)))
            for _ in range(20)
        ]
        await eventually(all_trickling)  # each slow sender sent its head: they are held
        answered = await asyncio.gather(*(post(client, n) for n in range(10)))
        results = await asyncio.gather(*slow)
    cut_off = min(r.ended_at for r in results)
    print(f"10 normal requests answered {cut_off - max(answered):.2f}s before the first cut-off")
    # Not a time limit on the answers: an order of events. A server held by the slow
    # bodies could answer the others only once those are cut off (2 s after they began).
    assert max(answered) < cut_off
    for result in results:
        # Answered 408 at the 2 s deadline and closed by the server, not at the 8 s end.
        assert result.answer.startswith(b"HTTP/1.1 408"), result.answer[:80]
        assert b'"error":"body not received within 2 s"' in result.answer
        assert result.closed
    assert await stored(nc) == 10


async def test_slow_headers_and_silent_connections_are_cut_off(
    process: Process, nc: Client
) -> None:
    """The deadline covers the whole request: headers a line a second, or nothing at all."""
    async with httpx.AsyncClient(timeout=5) as client:
        await wait_ready(f"http://127.0.0.1:{process.port}", client)
    head = b"POST /webhook HTTP/1.1\r\nHost: x\r\n"
    for first, drip in ((head, b"X-Pad: p\r\n"), (b"", b"")):
        answer, elapsed, closed, _ = await _drip(process.port, first, drip, 8.0)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert answer.endswith(b'{"ok":false,"error":"request not received within 2 s"}')
        assert closed  # by the server, not by the 8 s of dripping running out
        assert elapsed > 1.5  # not before its deadline (a lower bound: load only adds)
    assert await stored(nc) == 0


async def test_a_trailer_that_never_ends_is_capped(process: Process, nc: Client) -> None:
    """Chunked trailers are head-like lines: the head cap holds for them too."""

    def run() -> bytes:
        with socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock:
            sock.sendall(
                b"POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\n{}\r\n0\r\nX-Trailer: "
            )
            for _ in range(3):
                time.sleep(0.1)  # in pieces, as a slow sender would: not waiting for anything
                sock.sendall(b"t" * 5000)  # one trailer line, never ended
            return _answer(sock)

    async with httpx.AsyncClient(timeout=5) as client:
        await wait_ready(f"http://127.0.0.1:{process.port}", client)
    answer = await asyncio.to_thread(run)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert await stored(nc) == 0


async def test_blank_lines_do_not_keep_an_idle_connection_open(process: Process) -> None:
    """After an answer, CRLFs (which begin no request) do not hold the connection."""
    async with httpx.AsyncClient(timeout=5) as client:
        await wait_ready(f"http://127.0.0.1:{process.port}", client)
    body = alert()
    first = _request_head(process.port, len(body)) + body
    # The deadline starts at the first blank line (0.5 s), so it ends at 2.5 s: a blank
    # line every 1.5 s (at 2 s, 3.5 s) stays half a second off it (see _drip). Every
    # 0.5 s, one came at the very moment the server closed, and the reset lost the answer.
    answer, _, closed, _ = await _drip(process.port, first, b"\r\n", 8.0, every=1.5)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert b"HTTP/1.1 408" in answer
    assert closed  # by the server, while the blank lines still came


async def test_without_a_deadline_a_slow_body_holds_its_connection(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    """The control for the test above: with ALERTBRIDGE_BODY_TIMEOUT=0 nothing cuts it off."""
    env = ingress_env(nats_server.url, body_timeout="0")
    with ingress_process(env, tmp_path / "ingress.log") as running:
        async with httpx.AsyncClient(timeout=5) as client:
            await wait_ready(f"http://127.0.0.1:{running.port}", client)
        # The 3.5 s are what is tested: time passes (well past the 2 s deadline of the
        # test above) and nothing cuts the connection off.
        answer, elapsed, closed, _ = await _trickle(running.port, 3.5)
    assert answer == b"" and not closed and elapsed >= 3.5
