"""bench/loadgen.py's `burst` mode: N requests started open-loop, each on a fresh
connection (`Connection: close`), from one epoll loop (asyncio cannot open 10,000
connections a second). Standard library only."""

from __future__ import annotations

import errno
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.loadgen_requests import parse_one

if TYPE_CHECKING:
    from bench.loadgen_requests import Load


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
