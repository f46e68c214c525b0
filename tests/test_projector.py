"""The projector, for real: a secured nats-server on deploy/nats-server.conf, a real worker
process on the paper broker producing the events, the projector as a process of its own
(`python -m projector`, killed with SIGKILL and restarted), and the `alertbridge` CLI
reading what it built. What the views say is checked against what the streams and the
paper book hold (from outside), and a projector killed mid-stream must end with exactly
the tables a clean rebuild makes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js.client import JetStreamContext

from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM
from ops.platform import projections as views
from tests.fleet import Fleet
from tests.secured import Secured, publish_alert
from tests.support import eventually, projections_or_none, python_module
from tests.workers import make_alert, paper_rows

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")
TABLES = ("alerts", "events", "orders", "positions", "dead_letters", "applied")


class ProjectorProcess:
    """`python -m projector` as the projector role, its file under `root`."""

    def __init__(self, secured: Secured, root: Path) -> None:
        self.db = root / "projections.db"
        self.log = root / "projector.log"
        self.env = secured.env(
            "projector", ALERTBRIDGE_PROJECTIONS_DB=str(self.db), ALERTBRIDGE_LAG_INTERVAL="0.2"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProjectorProcess:
        self.proc = python_module("projector", self.env, self.log)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ALERTBRIDGE_PROJECTIONS_DB": str(self.db)}
        return subprocess.run(
            [ALERTBRIDGE, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )


@pytest.fixture
def projector(
    secured: Secured, as_ops: JetStreamContext, tmp_path: Path
) -> Iterator[ProjectorProcess]:
    process = ProjectorProcess(secured, tmp_path).start()
    yield process
    process.stop()


@pytest.fixture
async def worker(secured: Secured, as_ops: JetStreamContext, tmp_path: Path) -> AsyncIterator[Path]:
    paper = tmp_path / "paper.db"
    env = secured.env("worker", ALERTBRIDGE_PAPER_DB=str(paper), ALERTBRIDGE_FETCH_TIMEOUT="0.5")
    fleet = Fleet(lambda _: env, 1, tmp_path)
    await fleet.start()
    yield paper
    await fleet.stop()


def dump(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows, in key order (the `applied.checked` clock aside)."""
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
        found = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}  # noqa: S608
    found["applied"] = [row[:2] for row in found["applied"]]
    return found


async def caught_up(as_ops: JetStreamContext, db: Path) -> bool | None:
    """The views have applied every stream up to its last sequence."""
    last = {
        s: (await as_ops.stream_info(s)).state.last_seq
        for s in (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM)
    }
    conn = await asyncio.to_thread(projections_or_none, db)
    if conn is None:
        return None
    try:
        done = views.applied(conn)
    finally:
        conn.close()
    return True if all(done[s] >= last[s] for s in last) else None


async def test_positions_and_pnl_from_real_fills(
    projector: ProjectorProcess, worker: Path, as_ops: JetStreamContext
) -> None:
    # buy 10 @100, buy 10 @110, sell 5 @120 -> 15 held at 105, realized 5 x 15 = 75
    for n, (side, qty, price) in enumerate([("buy", 10, 100), ("buy", 10, 110), ("sell", 5, 120)]):
        alert = make_alert(f"pnl-{n}", symbol="NYSE:IBM", side=side, quantity=qty, price=price)
        await publish_alert(as_ops, alert)
    await publish_alert(as_ops, make_alert("other", symbol="NASDAQ:MSFT", quantity=2.0))

    async def four_orders() -> bool | None:
        return True if len(paper_rows(str(worker))) == 4 else None

    await eventually(four_orders, within=30)
    await eventually(lambda: caught_up(as_ops, projector.db), within=30)
    shown = projector.cli("positions", "--json", "--symbol", "NYSE:IBM")
    assert shown.returncode == 0, shown.stderr
    (ibm,) = [json.loads(line) for line in shown.stdout.splitlines()]
    assert (ibm["quantity"], ibm["avg_price"], ibm["realized_pnl"], ibm["fills"]) == (
        15,
        105,
        75,
        3,
    )
    orders = [json.loads(line) for line in projector.cli("orders", "--json").stdout.splitlines()]
    assert [o["seq"] for o in orders] == sorted((o["seq"] for o in orders), reverse=True)
    ibm_ids = [o["alert_id"] for o in orders if o["symbol"] == "NYSE:IBM"]
    assert ibm_ids == ["pnl-2", "pnl-1", "pnl-0"]  # newest first
    assert {o["client_order_id"] for o in orders} == {r[0] for r in paper_rows(str(worker))}
    listed = projector.cli("alerts", "ls", "--json", "--symbol", "NYSE:IBM", "--limit", "2")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r.get("alert_id") for r in rows[:2]] == ["pnl-2", "pnl-1"]
    assert rows[2].keys() == {"next_cursor"}
    rest = projector.cli(
        "alerts", "ls", "--json", "--symbol", "NYSE:IBM", "--cursor", rows[2]["next_cursor"]
    )
    assert [json.loads(line)["alert_id"] for line in rest.stdout.splitlines()] == ["pnl-0"]
    story = json.loads(projector.cli("alerts", "show", "pnl-1", "--json").stdout)
    assert story["alert"]["status"] == "executed" and story["alert"]["fill_price"] == 110
    assert [e["kind"] for e in story["timeline"]] == ["executed"]
    missing = projector.cli("alerts", "show", "nope")
    assert missing.returncode == 1 and "no alert 'nope'" in missing.stderr
    bad = projector.cli("orders", "--cursor", "garbage!")
    assert bad.returncode == 2 and "bad cursor" in bad.stderr


async def test_kill_9_mid_stream_ends_as_a_clean_rebuild(
    projector: ProjectorProcess, worker: Path, as_ops: JetStreamContext
) -> None:
    total = 300
    for n in range(total):
        if n % 50 == 7:  # a close with nothing open: rejected, into the DLQ
            alert = make_alert(f"k-{n}", symbol=f"NONE{n}", side="close")
        else:
            alert = make_alert(f"k-{n}", symbol=f"S{n % 7}", side="buy")
        await publish_alert(as_ops, alert)
        if n == total // 3:
            projector.kill()  # mid-stream: some batches applied and acked, some not
            projector.start()

    async def all_done() -> bool | None:
        return True if (await as_ops.stream_info(EVENTS_STREAM)).state.messages >= total else None

    await eventually(all_done, within=120, interval=0.3)
    projector.kill()
    projector.start()
    await eventually(lambda: caught_up(as_ops, projector.db), within=60)
    before = dump(projector.db)
    assert len(before["alerts"]) == total
    assert len(before["dead_letters"]) == (await as_ops.stream_info(DLQ_STREAM)).state.messages > 0
    generation = projector.db.resolve()
    rebuilt = projector.cli("projections", "rebuild", "--timeout", "60")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert projector.db.resolve() != generation and not generation.exists()
    after = dump(projector.db)
    for table in TABLES:
        diff = [(a, b) for a, b in zip(before[table], after[table], strict=True) if a != b]
        changed = [[x for x in zip(*d, strict=True) if x[0] != x[1]] for d in diff[:2]]
        assert diff == [], (table, changed)


async def test_a_health_port_in_use_leaves_the_projector_projecting(
    secured: Secured, as_ops: JetStreamContext, worker: Path, tmp_path: Path
) -> None:
    """uvicorn exits the process when it cannot bind: the projector logs it and goes on
    (under `alertbridge up` a projector that exited would be restarted in a loop)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = ProjectorProcess(secured, tmp_path)
        process.env["ALERTBRIDGE_HEALTH_PORT"] = str(taken.getsockname()[1])
        process.start()
        try:
            await publish_alert(as_ops, make_alert("port-taken", symbol="NYSE:IBM"))
            await eventually(lambda: caught_up(as_ops, process.db), within=30)
            assert process.proc is not None and process.proc.poll() is None  # still running
            assert "unavailable; the projector goes on without it" in process.log.read_text()
            shown = process.cli("alerts", "show", "port-taken", "--json")
            assert json.loads(shown.stdout)["alert"]["status"] == "executed"
        finally:
            process.stop()
