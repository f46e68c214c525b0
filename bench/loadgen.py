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
import json
import os
import sys
import time
from pathlib import Path
from typing import cast

if __name__ == "__main__":
    # Run as a script, this folder is sys.path[0]: the checkout's root goes first, so that
    # `bench` is the package (not bench/bench.py) for the modes' modules below.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen_burst import burst
from bench.loadgen_requests import Load, parse_one


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
