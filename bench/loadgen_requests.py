"""bench/loadgen.py's requests and their bookkeeping, shared by its modes: the request
bytes (the body of the reference's load/alerts.lua, every id unique unless --dup-every),
reading an HTTP/1.1 answer, and the counts, latencies and summary it prints. Standard
library only."""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

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
