"""Loopback HTTP load for `just bench`, where wrk does not fit.

Three modes, all POSTing the body of the reference's load/alerts.lua
(`{"secret","id","symbol","action","qty"}`), every id unique unless --dup-every:

  burst   N requests started open-loop, evenly over --over seconds, each on a FRESH
          connection (`Connection: close`, as TradingView opens them), from one epoll
          loop (no asyncio: it cannot open 10,000 connections a second). Latency is
          measured from the start of connect() to the last byte of the answer.
  paced   open-loop at --rate requests/s for --duration s over a pool of keep-alive
          connections (a request waits in a queue when every connection is busy, and
          that wait counts in its latency).
  count   exactly N requests as fast as --conns keep-alive connections allow.

Prints one JSON object (counts by status, fresh/duplicate 2xx, latency percentiles,
achieved send span and rate, peak concurrency). Every request ends within --timeout.
Standard library only (uvloop when importable).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import random
import select
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

HDR_END = b"\r\n\r\n"


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def parse_one(buf: bytearray, eof: bool = False) -> tuple[int, bytes, int] | None:
    """(status, body, bytes consumed) of the first complete response in buf, else None."""
    end = buf.find(HDR_END)
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1")
    lines = head.split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return (0, b"", len(buf)) if eof else None
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    start = end + 4
    if length is None:  # body until EOF (Connection: close without a length)
        return (status, bytes(buf[start:]), len(buf)) if eof else None
    if len(buf) - start < length:
        return None
    return status, bytes(buf[start : start + length]), start + length


class Ids:
    """alerts.lua's ids: <prefix>-<n>; with dup_every, every Nth repeats an earlier one."""

    def __init__(self, prefix: str, dup_every: int, dup_lag: int) -> None:
        self.prefix, self.dup_every, self.dup_lag = prefix, dup_every, dup_lag
        self.sent: list[str] = []
        self.n = 0

    def next(self) -> tuple[str, bool]:
        self.n += 1
        if self.dup_every >= 2 and self.n % self.dup_every == 0 and self.sent:
            back = min(self.dup_lag, len(self.sent))
            return self.sent[-back], True
        new = f"{self.prefix}-{len(self.sent)}"
        self.sent.append(new)
        return new, False


class Load:
    """Request bytes and result bookkeeping shared by the modes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.host, self.port = args.host, args.port
        prefix = args.prefix or f"{random.getrandbits(32):08x}"
        self.ids = Ids(prefix, args.dup_every, args.dup_lag)
        self.symbols = [s for s in args.symbols.split(",") if s] or ["BTCUSDT"]
        self.status: Counter[int | str] = Counter()
        self.fresh = 0
        self.dupe = 0
        self.latency: list[float] = []
        self.errors: Counter[str] = Counter()
        self.inflight = 0
        self.peak = 0
        self.first_send: float | None = None
        self.last_send: float | None = None
        self.sent = 0
        self.sent_dup = 0
        self.accepted_ids: set[str] = set()
        self.fresh_ids: list[str] = []

    def request(self, close: bool) -> tuple[bytes, str]:
        alert_id, dup = self.ids.next()
        self.sent_dup += dup
        symbol = self.symbols[self.sent % len(self.symbols)]
        self.sent += 1
        body = (
            f'{{"secret":"{self.args.secret}","id":"{alert_id}","symbol":"{symbol}",'
            f'"action":"buy","qty":1}}'
        ).encode()
        head = (
            f"POST {self.args.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        ).encode()
        return head + body, alert_id

    def record(self, alert_id: str, status: int | str, body: bytes, seconds: float) -> None:
        self.status[status] += 1
        self.latency.append(seconds)
        if isinstance(status, int) and 200 <= status < 300:
            self.accepted_ids.add(alert_id)
            if b'"duplicate":true' in body:
                self.dupe += 1
            else:
                self.fresh += 1
                self.fresh_ids.append(alert_id)

    def mark_send(self, now: float) -> None:
        if self.first_send is None:
            self.first_send = now
        self.last_send = now
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)

    def summary(self, elapsed: float) -> dict[str, Any]:
        lat = sorted(self.latency)
        answered = sum(n for s, n in self.status.items() if isinstance(s, int))
        span = (self.last_send - self.first_send) if self.first_send and self.last_send else 0.0
        return {
            "mode": self.args.mode,
            "sent": self.sent,
            "sent_dup_ids": self.sent_dup,
            "answered": answered,
            "status": {str(k): v for k, v in sorted(self.status.items(), key=str)},
            "fresh_2xx": self.fresh,
            "duplicate_2xx": self.dupe,
            "accepted_unique_ids": len(self.accepted_ids),
            "errors": dict(self.errors),
            "p50_ms": _ms(percentile(lat, 50)),
            "p90_ms": _ms(percentile(lat, 90)),
            "p99_ms": _ms(percentile(lat, 99)),
            "max_ms": _ms(lat[-1] if lat else None),
            "over_3s": sum(1 for v in lat if v >= 3.0),
            "send_span_s": round(span, 3),
            "elapsed_s": round(elapsed, 3),
            "achieved_rps": round(answered / elapsed, 1) if elapsed > 0 else None,
            "peak_concurrency": self.peak,
            "id_prefix": self.ids.prefix,
        }


class KeepAlive(asyncio.Protocol):
    """A persistent connection: one request at a time."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # a stream connection's

    def data_received(self, data: bytes) -> None:
        self.buf += data
        got = parse_one(self.buf)
        if got is not None and self.waiter is not None and not self.waiter.done():
            del self.buf[: got[2]]
            self.waiter.set_result(got[:2])

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionResetError("closed by the server"))

    async def send(self, data: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        if self.transport is None:
            raise ConnectionResetError("not connected")
        self.transport.write(data)
        return await self.waiter


@dataclass(slots=True)
class _Conn:
    """One burst request on its own connection."""

    sock: socket.socket
    data: bytes
    alert_id: str
    start: float
    buf: bytearray = field(default_factory=bytearray)
    sent: bool = False


class _Burst:
    """burst()'s open connections, by fd, on one epoll."""

    LINGER = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT pile-up on loopback

    def __init__(self, load: Load) -> None:
        self.load = load
        self.ep = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.finished = 0

    def open(self, data: bytes, alert_id: str, now: float) -> None:
        """Start connecting (non-blocking); the request goes once the socket is writable."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((self.load.host, self.load.port))
        self.load.mark_send(now)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.load.inflight -= 1
            self.finished += 1
            self.load.errors[errno.errorcode.get(err, str(err))] += 1
            self.load.record(alert_id, "error", b"", 0.0)
            return
        self.conns[sock.fileno()] = _Conn(sock, data, alert_id, now)
        self.ep.register(sock.fileno(), select.EPOLLOUT)

    def close(self, fd: int) -> None:
        c = self.conns.pop(fd)
        self.ep.unregister(fd)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, self.LINGER)
        c.sock.close()
        self.load.inflight -= 1
        self.finished += 1

    def fail(self, fd: int, c: _Conn, why: str) -> None:
        self.load.errors[why] += 1
        self.load.record(c.alert_id, "error", b"", time.monotonic() - c.start)
        self.close(fd)

    def event(self, fd: int, ev: int) -> None:
        """Writable: send the request; readable: read the answer (or fail)."""
        c = self.conns.get(fd)
        if c is None:
            return
        if c.sent:
            self._receive(fd, c)
        elif ev & (select.EPOLLERR | select.EPOLLHUP):
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self.fail(fd, c, errno.errorcode.get(err, str(err)))
        else:
            self._send(fd, c)

    def _send(self, fd: int, c: _Conn) -> None:
        try:
            c.sock.send(c.data)
        except OSError as exc:
            self.fail(fd, c, type(exc).__name__)
            return
        c.sent = True
        self.ep.modify(fd, select.EPOLLIN)

    def _receive(self, fd: int, c: _Conn) -> None:
        try:
            chunk = c.sock.recv(65536)
        except OSError as exc:
            self.fail(fd, c, type(exc).__name__)
            return
        if chunk:
            c.buf += chunk
        got = parse_one(c.buf, eof=not chunk)
        if got is not None:
            self.load.record(c.alert_id, got[0], got[1], time.monotonic() - c.start)
            self.close(fd)
        elif not chunk:
            self.fail(fd, c, "closed before an answer")

    def reap(self, now: float, timeout: float) -> None:
        """Give up on the requests older than `timeout`."""
        for fd in [fd for fd, c in self.conns.items() if now - c.start > timeout]:
            c = self.conns[fd]
            self.load.errors["timeout"] += 1
            self.load.record(c.alert_id, "timeout", b"", now - c.start)
            self.close(fd)


def burst(load: Load) -> float:
    """Open-loop fresh connections on one epoll loop (asyncio is too slow to open
    10,000 connections a second). A request's time runs from its connect() to the
    last byte of its answer; requests are built before the first is sent."""
    args = load.args
    n, over = args.requests, args.over
    prepared = [load.request(close=True) for _ in range(n)]
    b = _Burst(load)
    t0 = time.monotonic() + 0.05
    i = 0
    last_scan = t0
    while b.finished < n:
        now = time.monotonic()
        while i < n and t0 + i * over / n <= now:
            b.open(*prepared[i], now)
            i += 1
        wait = 0.05 if i >= n else max(0.0, min(0.002, t0 + i * over / n - time.monotonic()))
        for fd, ev in b.ep.poll(wait):
            b.event(fd, ev)
        now = time.monotonic()
        if now - last_scan > 0.1:
            last_scan = now
            b.reap(now, args.timeout)
    b.ep.close()
    return time.monotonic() - t0


async def _connect(load: Load) -> KeepAlive:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(KeepAlive, load.host, load.port)
    return proto


class _Pool:
    """count / paced: requests queued for a pool of keep-alive connections."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.queue: asyncio.Queue[tuple[float, bytes, str] | None] = asyncio.Queue()
        self.t0 = 0.0  # when sending started (for --max-seconds)

    async def conn_worker(self) -> None:
        """One connection: take requests from the queue until told to stop (None)."""
        queue = self.queue
        proto = await _connect(self.load)
        while True:
            item = queue.get_nowait() if not queue.empty() else await queue.get()
            if item is None:
                break
            proto = await self._one(proto, *item)
        if proto.transport is not None:
            proto.transport.close()

    async def _one(
        self, proto: KeepAlive, queued_at: float, data: bytes, alert_id: str
    ) -> KeepAlive:
        """Send one request and record its answer; the connection to use next."""
        load, args, loop = self.load, self.load.args, asyncio.get_running_loop()
        if args.max_seconds and loop.time() - self.t0 > args.max_seconds:
            load.sent -= 1  # time is up: not sent
            return proto
        if proto.closed:
            proto = await _connect(load)
        load.mark_send(loop.time())
        try:
            async with asyncio.timeout(args.timeout):
                status, body = await proto.send(data)
            load.record(alert_id, status, body, loop.time() - queued_at)
        except TimeoutError:
            load.errors["timeout"] += 1
            load.record(alert_id, "timeout", b"", loop.time() - queued_at)
            if proto.transport is not None:
                proto.transport.close()
            proto = await _connect(load)
        except OSError as exc:
            load.errors[type(exc).__name__] += 1
            load.record(alert_id, "error", b"", loop.time() - queued_at)
            proto = await _connect(load)
        finally:
            load.inflight -= 1
        return proto

    async def pace(self, total: int, rate: float) -> None:
        """Queue `total` requests open-loop at `rate` per second (each stamped when due)."""
        loop = asyncio.get_running_loop()
        i = 0
        while i < total:
            now = loop.time()
            while i < total and self.t0 + i / rate <= now:
                data, alert_id = self.load.request(close=False)
                self.queue.put_nowait((self.t0 + i / rate, data, alert_id))
                i += 1
            if i < total:
                await asyncio.sleep(max(0.0, self.t0 + i / rate - loop.time()))


async def pooled(load: Load, paced: bool) -> float:
    """count / paced: a pool of keep-alive connections."""
    args, loop = load.args, asyncio.get_running_loop()
    total = args.requests if not paced else int(args.rate * args.duration)
    pool = _Pool(load)
    pool.t0 = loop.time()
    workers = [asyncio.create_task(pool.conn_worker()) for _ in range(args.conns)]
    await asyncio.sleep(0.05)
    pool.t0 = t0 = loop.time()
    if paced:
        await pool.pace(total, args.rate)
    else:
        for _ in range(total):
            data, alert_id = load.request(close=False)
            pool.queue.put_nowait((t0, data, alert_id))
    for _ in workers:
        pool.queue.put_nowait(None)
    await asyncio.gather(*workers)
    return loop.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("mode", choices=["burst", "paced", "count"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/webhook")
    ap.add_argument("--secret", default=os.environ.get("SECRET", "s3cret"))
    ap.add_argument("--requests", type=int, default=10_000, help="burst/count: how many")
    ap.add_argument("--over", type=float, default=1.0, help="burst: seconds to start them over")
    ap.add_argument("--rate", type=float, default=1000.0, help="paced: requests per second")
    ap.add_argument("--duration", type=float, default=30.0, help="paced: seconds")
    ap.add_argument("--conns", type=int, default=64, help="paced/count: keep-alive connections")
    ap.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    ap.add_argument("--max-seconds", type=float, default=0, help="count: stop sending after this")
    ap.add_argument("--dup-every", type=int, default=0, help="every Nth request repeats an id")
    ap.add_argument("--dup-lag", type=int, default=100, help="...the one sent this many ids ago")
    ap.add_argument("--symbols", default="BTCUSDT", help="comma-separated, used round-robin")
    ap.add_argument("--prefix", default="", help="id prefix (default: random)")
    ap.add_argument("--ids-out", default="", help="write the ids answered fresh 2xx here")
    args = ap.parse_args()
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    load = Load(args)
    started = time.monotonic()
    with asyncio.Runner(loop_factory=factory) as runner:
        if args.mode == "burst":
            elapsed = burst(load)
        else:
            elapsed = runner.run(pooled(load, paced=args.mode == "paced"))
    out = load.summary(elapsed)
    out["wall_s"] = round(time.monotonic() - started, 3)
    if args.ids_out:
        Path(args.ids_out).write_text("\n".join(load.fresh_ids), encoding="utf-8")
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
