"""The kill switch with real processes: `alertbridge halt` and `resume` as the ops user,
several worker processes on the real secured server, a broker that keeps the history.

The bound checked cannot flake: every worker reads the halt keys before each broker
call, so an alert published after `alertbridge halt` has returned is never placed, on
any worker. How long after the halt the last order already in a broker call landed is
printed, not asserted.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.messages import Executed, Halted, Rejected, Resumed
from ops.tools import dlq
from tests.risk_support import (
    broker_and_fleet,
    cli,
    finished,
    halt_events,
    ops_fixture,  # noqa: F401 (the `ops` fixture)
    run_cli,
    send,
)
from tests.secured import Secured
from tests.support import eventually
from worker.halts import Fresh

WORKERS = 3
PACE = 0.02  # seconds between two alerts of the stream sent across the halt
AT_MOST = 3_000  # alerts in that stream (tags 100 on); it stops 20 after the halt


async def test_every_worker_obeys_a_halt_and_a_resume_and_replays_execute(
    secured: Secured, ops: JetStreamContext, as_ingress: Client, tmp_path: Path
) -> None:
    ingress = secured.js("ingress", as_ingress)
    async with broker_and_fleet(secured, tmp_path, WORKERS) as (broker, _):
        warmup = {await send(ingress, tag) for tag in range(1, 13)}
        assert {type(e) for e in (await finished(ops, warmup)).values()} == {Executed}

        # Alerts keep coming while the halt is written.
        published_after: set[str] = set()
        halted_at: list[float] = []

        async def stream() -> set[str]:
            """Send until 20 alerts went out after the halt returned, however slow the
            `alertbridge halt` process is to start on a loaded machine."""
            sent = set()
            for tag in range(100, 100 + AT_MOST):
                if len(published_after) >= 20:
                    break
                after = bool(halted_at)
                alert_id = await send(ingress, tag)
                sent.add(alert_id)
                if after:
                    published_after.add(alert_id)
                await asyncio.sleep(PACE)  # pacing, not waiting for anything
            return sent

        sender = asyncio.create_task(stream())
        await asyncio.sleep(0.3)  # let some alerts through before the halt
        await run_cli(secured, tmp_path, "halt", "--reason", "maintenance window")
        halted_at.append(time.monotonic())
        sent = await sender
        outcome = await finished(ops, sent)

        assert len(published_after) > 10, "the halt came too late to test anything"
        for alert_id in published_after:
            event = outcome[alert_id]
            assert isinstance(event, Rejected), f"{alert_id} ran after the halt returned"
            assert event.reason == "trading halted: maintenance window"
        placed_after = {
            f"a{c.tag}" for c in broker.receiver.calls if c.placed and c.at > halted_at[0]
        }
        assert not placed_after & published_after
        last = max((c.at for c in broker.receiver.calls if c.placed), default=halted_at[0])
        print(f"\nlast placement {max(0.0, last - halted_at[0]) * 1000:.0f} ms after the halt "
              f"returned ({len(placed_after)} orders in a broker call then)")  # fmt: skip

        # Resumed: new alerts execute, and a halted one replayed from the DLQ does too.
        await run_cli(secured, tmp_path, "resume")
        fresh = {await send(ingress, tag) for tag in range(5_000, 5_006)}
        assert {type(e) for e in (await finished(ops, fresh)).values()} == {Executed}
        target = sorted(published_after)[0]
        (entry,) = [e for e in await dlq.entries(ops) if e.alert_id == target]
        assert entry.reason.endswith("trading halted: maintenance window")
        await run_cli(secured, tmp_path, "dlq", "replay", str(entry.dlq_seq))

        async def replayed() -> bool | None:
            return True if int(target[1:]) in broker.placed_tags() else None

        await eventually(replayed, within=20)

    events = await halt_events(ops)
    assert [type(e) for e in events] == [Halted, Resumed]
    assert isinstance(events[0], Halted) and events[0].account == "*"
    assert (events[0].reason, events[0].by) == ("maintenance window", "ops")


async def test_an_account_halt_stops_only_that_account_and_a_global_halt_every_one(
    secured: Secured, ops: JetStreamContext, as_ingress: Client, tmp_path: Path
) -> None:
    ingress = secured.js("ingress", as_ingress)
    async with broker_and_fleet(secured, tmp_path, 1) as (broker, _):
        await run_cli(secured, tmp_path, "halt", "--account", "capped", "--reason", "audit")
        first = {await send(ingress, 1, "capped"), await send(ingress, 2)}
        outcome = await finished(ops, first)
        assert isinstance(outcome["a1"], Rejected) and outcome["a1"].reason == (
            "trading halted: audit"
        )
        assert isinstance(outcome["a2"], Executed)

        await run_cli(secured, tmp_path, "halt", "--reason", "everything off")
        listed = await run_cli(secured, tmp_path, "halts")
        assert "everything off" in listed and "audit" in listed
        # Resuming the account leaves the global halt in force, and says so.
        done = await asyncio.to_thread(cli, secured, tmp_path, "resume", "--account", "capped")
        assert done.returncode == 0, done.stderr
        assert "still halted: every account (ops): everything off" in done.stderr
        second = {await send(ingress, 3, "capped"), await send(ingress, 4)}
        outcome = await finished(ops, second)
        assert all(
            isinstance(e, Rejected) and e.reason == "trading halted: everything off"
            for e in outcome.values()
        )
        await run_cli(secured, tmp_path, "resume")
        assert "no halts" in (await asyncio.to_thread(cli, secured, tmp_path, "halts")).stderr
        third = {await send(ingress, 5, "capped"), await send(ingress, 6)}
        assert {type(e) for e in (await finished(ops, third)).values()} == {Executed}
    assert broker.placed_tags() == {2, 5, 6}


async def test_the_circuit_breaker_halts_after_n_rejections_until_resumed(
    secured: Secured, ops: JetStreamContext, as_ingress: Client, tmp_path: Path
) -> None:
    ingress = secured.js("ingress", as_ingress)
    limits = {"halt_after_rejections": "3"}
    async with broker_and_fleet(secured, tmp_path, 2, limits) as (broker, _):
        broker.refuse = {"SYM1", "SYM2", "SYM3"}
        refused = {await send(ingress, tag, "capped") for tag in (1, 2, 3)}
        outcome = await finished(ops, refused)
        assert all("insufficient buying power" in e.reason for e in outcome.values())  # type: ignore[union-attr]

        async def tripped() -> list[Halted] | None:
            found = [e for e in await halt_events(ops) if isinstance(e, Halted)]
            return found or None

        (trip,) = await eventually(tripped, within=10)
        assert (trip.account, trip.by, trip.reason) == (
            "capped",
            "breaker",
            "3 consecutive rejections",
        )
        after = {await send(ingress, 4, "capped"), await send(ingress, 5)}  # SYM4, SYM5: accepted
        outcome = await finished(ops, after)
        assert isinstance(outcome["a4"], Rejected)
        assert outcome["a4"].reason == "trading halted: 3 consecutive rejections"
        assert isinstance(outcome["a5"], Executed)  # another account trades on
        listed = await run_cli(secured, tmp_path, "halts")
        assert "capped" in listed and "breaker" in listed

        await run_cli(secured, tmp_path, "resume", "--account", "capped")
        # A fresh streak: one more refusal does not trip it again.
        again = {await send(ingress, 8, "capped"), await send(ingress, 11, "capped")}
        outcome = await finished(ops, again)
        assert isinstance(outcome["a8"], Rejected) and "insufficient" in outcome["a8"].reason
        assert isinstance(outcome["a11"], Executed)  # SYM4
    assert broker.refused == 4
    assert len([e for e in await halt_events(ops) if isinstance(e, Halted)]) == 1


def test_halt_needs_a_reason(secured: Secured, tmp_path: Path) -> None:
    missing = cli(secured, tmp_path, "halt")
    assert missing.returncode == 2 and "--reason" in missing.stderr
    blank = cli(secured, tmp_path, "halt", "--reason", "  ")
    assert blank.returncode == 2 and "--reason must say why" in blank.stderr


async def test_a_fresh_read_starts_after_the_call_and_is_shared_while_one_runs() -> None:
    """The promise halts rest on: `get()` never answers from a load begun before it."""
    started: list[int] = []
    gate = asyncio.Event()

    async def load() -> int:
        started.append(len(started))
        await gate.wait()
        return started[-1]

    fresh = Fresh(load)
    first = asyncio.create_task(fresh.get())

    async def began() -> bool | None:
        return True if started else None

    await eventually(began, within=2)
    # Load 0 runs; these come after it began: they must share load 1, not load 0.
    late = [asyncio.create_task(fresh.get()) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == 0
    assert await asyncio.gather(*late) == [1] * 5
    assert started == [0, 1]  # two loads for six calls
