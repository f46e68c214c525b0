"""Phase `projections`: the read side with a long history (issue 18, point 5).

`--proj-events` executed events (realistic ones, as the worker records them: 4 accounts,
64 symbols, a fill price each) are published straight into EVENTS of a fresh server,
with the workers and the ingress off (nats-server fsyncs once a second: filling is
set-up). Then:

- the projector (`python -m projector`, CPU 1) is started on that backlog and timed
  until it has folded all of it in: its fold rate, to compare with the worker phase's
  drain rate (paper broker, 64 symbols) from the same run, when that phase ran;
- `alertbridge orders --limit 50` is run as a user runs it (a process: the
  interpreter's start, the CLI's imports, the query, the output), beside
  `alertbridge --help` (the same start without the query), and the query behind
  `GET /api/alerts?limit=50` (ops.platform.projections.list_alerts) is timed in
  process, first page, filtered, and a later page by its cursor.

What this does not measure: ALERTS is empty here (an alert's own message is one more
insert per alert), and the fold rate is a catch-up from a backlog, not the lag while a
worker drains.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import nats

from bench.common import PY, BenchError, log
from bench.procs import PROCS, run
from bench.results import ProjectionsPhase, Timing
from contracts.messages import Executed, event_encoder
from contracts.subjects import EVENTS_STREAM, event_subject
from ops.platform import projections as views

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from bench.harness import Harness

ACCOUNTS = 4
SYMBOLS = 64
IN_FLIGHT = 2048  # publish_async futures awaited together
CLI_RUNS = 7
QUERY_RUNS = 50


def run_phase(h: Harness) -> None:
    """Fill EVENTS, time the projector's catch-up, then the reads on what it built."""
    n = h.opts.proj_events
    res = ProjectionsPhase(events=n)
    h.results.projections = res
    drained = h.results.worker.paper_64_symbols if h.results.worker else None
    res.worker_drain_per_s = drained.rate_per_s if drained else None
    # fsync once a second: the fill is set-up, not what is measured (the reads are not
    # fsync-bound, and the projector commits to its own file).
    with h.running("projections", ingress=False, sync="1s") as started:
        t0 = time.monotonic()
        asyncio.run(fill(h.streams.url, n))
        res.fill_s = round(time.monotonic() - t0, 1)
        log(f"  {n} executed events stored in {res.fill_s} s")
        db = h.tmp / "projections.db"
        env = started.env | {"ALERTBRIDGE_PROJECTIONS_DB": str(db)}
        proc = PROCS.start("projector", [PY, "-m", "projector"], env=env, cwd=h.tmp,
                           log_to=h.out / "projections.projector.log", cpu=1)  # fmt: skip
        try:
            fold_s, mid80 = catch_up(db, n, h.opts.proj_max_seconds, proc.poll)
        finally:
            PROCS.stop(proc)
        res.fold_s, res.fold_per_s = fold_s, round(n / fold_s)
        res.fold_mid80_per_s = mid80
        log(f"  projector folded {n} in {fold_s} s: {res.fold_per_s}/s (mid-80 % {mid80}/s)")
        cli_env = h.ab_env(ALERTBRIDGE_PROJECTIONS_DB=str(db))
        res.cli_orders_50 = cli(h, cli_env, ["orders", "--limit", "50"], rows=None)
        res.cli_orders_50_json = cli(h, cli_env, ["orders", "--limit", "50", "--json"], rows=51)
        res.cli_help = cli(h, cli_env, ["--help"], rows=None)
        res.list_alerts_50 = query(db)
        res.list_alerts_50_filtered = query(db, account="acct-3", symbol="SYM07")
        res.list_alerts_50_page_10 = query(db, pages=10)
        files = [p for p in db.parent.glob("projections*") if not p.is_symlink()]
        res.db_mib = round(sum(p.stat().st_size for p in files) / 2**20)  # with its WAL
    log(f"  orders --limit 50: {res.cli_orders_50}; --help: {res.cli_help}")
    log(f"  list_alerts(limit=50): {res.list_alerts_50}; filtered {res.list_alerts_50_filtered}")


async def fill(url: str, n: int) -> None:
    """`n` executed events into EVENTS, `IN_FLIGHT` publishes awaited at a time."""
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=IN_FLIGHT * 2)
    at = datetime.now(UTC)
    try:
        for start in range(0, n, IN_FLIGHT):
            futures = []
            for i in range(start, min(start + IN_FLIGHT, n)):
                account, symbol = f"acct-{i % ACCOUNTS}", f"SYM{i % SYMBOLS:02d}"
                event = Executed(
                    alert_id=f"bench-{i}", account=account, symbol=symbol, at=at,
                    side="buy" if i % 3 else "sell", quantity=1.0 + i % 5, order_type="market",
                    client_order_id=f"ab-{i:016x}", broker="paper", broker_order_id=f"p-{i}",
                    status="filled", fill_price=100.0 + i % 50, attempts=1, stream_seq=i + 1,
                    latency=0.004,
                )  # fmt: skip
                subject = event_subject("executed", account, symbol)
                futures.append(await js.publish_async(subject, event_encoder.encode(event)))
            await asyncio.gather(*futures)
        stored = (await js.stream_info(EVENTS_STREAM)).state.messages
        if stored != n:
            raise BenchError(f"EVENTS holds {stored} messages, not {n}")
    finally:
        await nc.close()


def catch_up(
    db: Path, n: int, bound: float, exited: Callable[[], int | None]
) -> tuple[float, int | None]:
    """Seconds from the projector's start until it has applied all `n` events, and the
    rate between 10 % and 90 % of them (the start and the last batch left out)."""
    t0 = time.monotonic()
    marks: dict[int, float] = {}
    while time.monotonic() - t0 < bound:
        if exited() is not None:
            raise BenchError("the projector exited; see projections.projector.log")
        done = _applied(db)
        now = time.monotonic()
        for pct in (10, 90):
            if pct not in marks and done >= n * pct // 100:
                marks[pct] = now
        if done >= n:
            mid = marks[90] - marks[10]
            return round(now - t0, 1), round(n * 0.8 / mid) if mid > 0 else None
        time.sleep(0.2)
    raise BenchError(f"the projector did not fold {n} events in within {bound} s")


def _applied(db: Path) -> int:
    try:
        conn = views.open_readonly(db)
    except FileNotFoundError:
        return 0
    try:
        return views.applied(conn)[EVENTS_STREAM]
    finally:
        conn.close()


def cli(h: Harness, env: dict[str, str], args: list[str], rows: int | None) -> Timing:
    """`alertbridge <args>`, run `CLI_RUNS` times as a process: wall time each. `rows`:
    the lines it must print (with --json, a page's items and its next cursor)."""
    seconds = []
    for _ in range(CLI_RUNS):
        t0 = time.perf_counter()
        done = run([h.ab_cli, *args], env=env, cwd=h.tmp, timeout=60)
        seconds.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise BenchError(f"alertbridge {args} failed: {done.stderr.decode()[-300:]}")
        if rows is not None and len(done.stdout.splitlines()) != rows:
            raise BenchError(f"alertbridge {args}: not {rows} lines")
    return Timing.of(seconds)


def query(
    db: Path, *, account: str | None = None, symbol: str | None = None, pages: int = 1
) -> Timing:
    """list_alerts(limit=50), filtered, its `pages`-th page (cursors followed untimed),
    timed `QUERY_RUNS` times on one read-only connection."""
    filters = {"account": account, "symbol": symbol}
    conn = views.open_readonly(db)
    try:
        cursor = None
        for _ in range(pages - 1):
            page = views.list_alerts(conn, account=account, symbol=symbol, cursor=cursor)
            cursor = page.next_cursor
        seconds = []
        for _ in range(QUERY_RUNS):
            t0 = time.perf_counter()
            page = views.list_alerts(conn, account=account, symbol=symbol, cursor=cursor)
            seconds.append(time.perf_counter() - t0)
            if len(page.items) != 50:
                raise BenchError(f"list_alerts {filters}: {len(page.items)} rows, not 50")
        return Timing.of(seconds)
    finally:
        conn.close()
