"""Small nats-py helpers for `just bench`: read counts and events back from JetStream,
and fill a stream for the dedup-memory measurement. Every call is bounded in time.

    natsq.py URL count STREAM [--subjects FILTER]   -> {"messages": n, "subjects": m}
    natsq.py URL ids STREAM                         -> messages, with_id, unique_ids, doubled
    natsq.py URL executed [--since-seq N]           -> count, latency p50/p99/max, rate
    natsq.py URL pending                            -> summed num_pending/ack_pending of worker-p*
    natsq.py URL fill K [--no-ids] [--window W]     -> publishes K alert-sized messages to ALERTS
    natsq.py URL publish RATE SECONDS               -> alerts straight into ALERTS at RATE/s

Only the public JetStream API is used ($JS.API.STREAM.INFO, ordered pull reads), so
this works against any alertbridge topology (the stream names are alertbridge's).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client
    from nats.aio.msg import Msg

API_TIMEOUT = 5.0


# What each command answers (the bench decodes these; `natsq.py` prints them as JSON).
class StreamCount(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A stream's state; `subjects`: the messages on the filter asked for, if one was."""

    messages: int
    first_seq: int
    last_seq: int
    bytes: int
    subjects: int | None = None


class IdCheck(msgspec.Struct, kw_only=True):
    """Nats-Msg-Ids in a stream: how many messages carry one, how many ids repeat."""

    messages: int
    with_id: int
    unique_ids: int
    doubled: int


class ExecutedStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`executed` events: how many, how fast, and their `latency` (only when there are
    some: the optional fields are left out of the JSON when unknown)."""

    executed: int
    already_done: int
    span_s: float | None = None
    rate_per_s: float | None = None
    rate_mid80_per_s: float | None = None
    # the middle 80 %'s first and last completion, epoch seconds
    mid80_from: float | None = None
    mid80_to: float | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    latency_all_p99_ms: float | None = None
    latency_all_max_ms: float | None = None
    latency_samples: int | None = None


class Pending(msgspec.Struct, kw_only=True):
    """Summed over the worker-p* consumers of ALERTS."""

    consumers: int
    num_pending: int
    num_ack_pending: int


class FillResult(msgspec.Struct, kw_only=True):
    published: int
    seconds: float
    with_ids: bool


class PublishResult(msgspec.Struct, kw_only=True):
    published: int
    seconds: float
    achieved_rate: float
    max_late_ms: float


class _State(msgspec.Struct):
    messages: int
    first_seq: int
    last_seq: int
    bytes: int
    subjects: dict[str, int] | None = None


class _StreamInfo(msgspec.Struct):
    state: _State | None = None
    error: dict[str, Any] | None = None


async def count(nc: Client, stream: str, subjects: str | None = None) -> StreamCount:
    """$JS.API.STREAM.INFO for `stream`, with a subject filter if given."""
    body = msgspec.json.encode({"subjects_filter": subjects}) if subjects else b""
    msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", body, timeout=API_TIMEOUT)
    info = msgspec.json.decode(msg.data, type=_StreamInfo)
    if info.error is not None or info.state is None:
        raise RuntimeError(f"STREAM.INFO {stream}: {info.error}")
    state = info.state
    return StreamCount(
        messages=state.messages,
        first_seq=state.first_seq,
        last_seq=state.last_seq,
        bytes=state.bytes,
        subjects=sum((state.subjects or {}).values()) if subjects else None,
    )


async def read(
    nc: Client, stream: str, subject: str, headers_only: bool, since: int, deadline: float
) -> AsyncIterator[Msg]:
    """Every stored message on `subject` from sequence `since`, oldest first (a generator)."""
    js = nc.jetstream()
    cfg = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if since > 1 else DeliverPolicy.ALL,
        opt_start_seq=since if since > 1 else None,
        inactive_threshold=30.0,
        headers_only=headers_only,
    )
    sub = await js.pull_subscribe(subject, stream=stream, config=cfg)
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        while remaining > 0 and time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(min(1000, remaining), timeout=5)
            except nats.errors.TimeoutError:
                break
            for m in msgs:
                yield m
            remaining = msgs[-1].metadata.num_pending
    finally:
        await sub.unsubscribe()


async def ids(nc: Client, stream: str, deadline: float) -> IdCheck:
    """Reads every message's headers and counts the repeated Nats-Msg-Ids."""
    seen: set[str] = set()
    n = with_id = doubled = 0
    async for m in read(nc, stream, ">", True, 1, deadline):
        n += 1
        mid = (m.headers or {}).get("Nats-Msg-Id")
        if mid is None:
            continue
        with_id += 1
        if mid in seen:
            doubled += 1
        seen.add(mid)
    return IdCheck(messages=n, with_id=with_id, unique_ids=len(seen), doubled=doubled)


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    k = max(0, min(len(values) - 1, round(p / 100 * len(values) + 0.5) - 1))
    return values[k]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class _Executed(msgspec.Struct):
    """The fields of an `executed` event read here (contracts.messages.Executed)."""

    at: datetime
    already_done: bool = False
    latency: float | None = None


_executed_decoder = msgspec.json.Decoder(_Executed)


async def executed(nc: Client, since: int, skip_first: float, deadline: float) -> ExecutedStats:
    """Latency (the worker's own `latency` field, receipt -> broker answer) and rate."""
    lat: list[float] = []
    ats: list[float] = []
    already = 0
    async for m in read(nc, "EVENTS", "events.executed.>", False, since, deadline):
        ev = _executed_decoder.decode(m.data)
        already += ev.already_done
        ats.append(ev.at.timestamp())
        if ev.latency is not None:
            lat.append(ev.latency)
    out = ExecutedStats(executed=len(ats), already_done=already)
    if ats:
        ats.sort()
        span = ats[-1] - ats[0]
        out.span_s = round(span, 3)
        out.rate_per_s = round((len(ats) - 1) / span, 1) if span > 0 else None
        # the middle 80 % of completions: start-up and tail excluded
        lo, hi = ats[len(ats) // 10], ats[(len(ats) * 9) // 10]
        mid_n = (len(ats) * 9) // 10 - len(ats) // 10
        out.rate_mid80_per_s = round(mid_n / (hi - lo), 1) if hi > lo else None
        out.mid80_from, out.mid80_to = lo, hi
    if lat:
        steady = lat[int(len(lat) * skip_first) :] if skip_first else lat
        steady.sort()
        lat.sort()
        out.latency_p50_ms = _ms(_pct(steady, 50))
        out.latency_p90_ms = _ms(_pct(steady, 90))
        out.latency_p99_ms = _ms(_pct(steady, 99))
        out.latency_max_ms = _ms(steady[-1])
        out.latency_all_p99_ms = _ms(_pct(lat, 99))
        out.latency_all_max_ms = _ms(lat[-1])
        out.latency_samples = len(steady)
    return out


async def pending(nc: Client) -> Pending:
    """What the workers have yet to take (num_pending) and to ack (num_ack_pending)."""
    js = nc.jetstream()
    total = ack = n = 0
    for c in await js.consumers_info("ALERTS"):
        if c.name.startswith("worker-p"):
            n += 1
            total += c.num_pending or 0
            ack += c.num_ack_pending or 0
    return Pending(consumers=n, num_pending=total, num_ack_pending=ack)


async def fill(
    nc: Client, k: int, with_ids: bool, deadline: float, window: int = 2000
) -> FillResult:
    """K alert-sized messages to ALERTS (64 symbols), as fast as publish_async allows,
    `window` at a time."""
    js = nc.jetstream(publish_async_max_pending=4000)
    t0 = time.monotonic()
    prefix = f"fill{int(t0 * 1000) % 100000000:08d}"
    template = (
        '{{"type":"alert","id":"{id}","account":"default","symbol":"SYM{s}","side":"buy",'
        '"quantity":1.0,"order_type":"market","received_at":"2026-01-01T00:00:00.000000Z",'
        '"extras":{{}}}}'
    )
    done = 0
    while done < k and time.monotonic() < deadline:
        futs = []
        for i in range(done, min(k, done + window)):
            alert_id = f"{prefix}-{i}"
            data = template.format(id=alert_id, s=i % 64).encode()
            headers = {"Nats-Msg-Id": alert_id} if with_ids else None
            futs.append(
                await js.publish_async(f"alerts.in.default.SYM{i % 64}", data, headers=headers)
            )
        acks = await asyncio.gather(*futs)
        done += len(acks)
    return FillResult(published=done, seconds=round(time.monotonic() - t0, 2), with_ids=with_ids)


async def publish(
    nc: Client, rate: float, seconds: float, deadline: float, symbols: int = 64
) -> PublishResult:
    """Alerts straight into ALERTS at `rate`/s (over `symbols` symbols), as the ingress
    stores them.

    Built with alertbridge's own contract (contracts.messages.Alert, received_at = now,
    Nats-Msg-Id = id) so the worker's `latency` counts from the moment of storing. Used
    to offer the worker a rate the ingress cannot accept on one core.
    """
    from contracts.messages import Alert, alert_encoder
    from contracts.subjects import alert_subject

    js = nc.jetstream(publish_async_max_pending=4000)
    loop = asyncio.get_running_loop()
    prefix = f"pub{random.getrandbits(32):08x}"
    total = int(rate * seconds)
    futs = []
    late = 0.0
    # No collector pass while publishing: a pass over the alerts and futures made so
    # far stalled this loop 20-40 ms between an alert's `received_at` and its send,
    # which the worker's latency then showed as its own.
    gc.disable()
    t0 = loop.time()
    for i in range(total):
        due = t0 + i / rate
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            late = max(late, now - due)
        if loop.time() > deadline - 5:
            break
        symbol = f"SYM{i % symbols:02d}"
        alert = Alert(
            id=f"{prefix}-{i}",
            symbol=symbol,
            side="buy",
            quantity=1.0,
            received_at=datetime.now(UTC),
        )
        futs.append(
            await js.publish_async(
                alert_subject("default", symbol),
                alert_encoder.encode(alert),
                headers={"Nats-Msg-Id": alert.id},
            )
        )
    await nc.flush()  # the last alerts sent now, not after the gather below
    acks = await asyncio.gather(*futs)
    gc.enable()
    elapsed = loop.time() - t0
    return PublishResult(
        published=len(acks),
        seconds=round(elapsed, 2),
        achieved_rate=round(len(acks) / elapsed, 1),
        max_late_ms=round(late * 1000, 1),
    )


Answer = StreamCount | IdCheck | ExecutedStats | Pending | PublishResult | FillResult


async def run(args: argparse.Namespace) -> Answer:
    """One command against `args.url`, within `args.max_seconds`."""
    deadline = time.monotonic() + args.max_seconds
    nc = await nats.connect(
        args.url, connect_timeout=3, max_reconnect_attempts=2, allow_reconnect=False
    )
    try:
        if args.cmd == "count":
            return await count(nc, args.stream, args.subjects)
        if args.cmd == "ids":
            return await ids(nc, args.stream, deadline)
        if args.cmd == "executed":
            return await executed(nc, args.since_seq, args.skip_first, deadline)
        if args.cmd == "pending":
            return await pending(nc)
        if args.cmd == "publish":
            return await publish(nc, args.rate, args.seconds, deadline, args.symbols)
        if args.cmd == "fill":
            return await fill(nc, args.k, not args.no_ids, deadline, args.window)
        raise SystemExit(f"unknown command {args.cmd}")
    finally:
        await nc.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="overall time bound")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("count")
    c.add_argument("stream")
    c.add_argument("--subjects", default=None)
    i = sub.add_parser("ids")
    i.add_argument("stream")
    e = sub.add_parser("executed")
    e.add_argument("--since-seq", type=int, default=1)
    e.add_argument("--skip-first", type=float, default=0.0, help="fraction left out (warm-up)")
    sub.add_parser("pending")
    p = sub.add_parser("publish")
    p.add_argument("rate", type=float)
    p.add_argument("seconds", type=float)
    p.add_argument("--symbols", type=int, default=64)
    f = sub.add_parser("fill")
    f.add_argument("k", type=int)
    f.add_argument("--no-ids", action="store_true")
    f.add_argument("--window", type=int, default=2000, help="publishes in flight at a time")
    args = ap.parse_args()
    out = asyncio.run(asyncio.wait_for(run(args), args.max_seconds + 10))
    sys.stdout.buffer.write(msgspec.json.encode(out) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
