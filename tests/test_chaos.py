"""Real processes under stress: per-symbol order across worker processes; kill -9 of
workers between "order placed" and "ack" (and at random moments) while alerts flow
through the real ingress; a nats-server restart under the ingress.

The history is checked from outside (Jepsen's way): what the sender was told (every
answer), what the broker saw (every order POST, per alert, in a list: tests.chaos_broker),
what the streams hold (EVENTS, DLQ). `ALERTBRIDGE_CHAOS_SEED` repeats a run's plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client

from contracts.messages import Executed, Expired, Rejected
from ops.platform import provision
from ops.platform.settings import load
from ops.tools.events import read_events
from tests.chaos_broker import Call, Receiver, broker_env, write_accounts
from tests.fleet import Fleet, ingress_process
from tests.history import Outcome, settle
from tests.support import NatsServer, eventually, serving_aiohttp
from tests.webhook_sender import Planned, Sender, by_symbol, plan
from tests.workers import make_alert, provisioned, publish
from worker.execute import client_order_id
from worker.settings import WorkerSettings

SEED = int(os.environ.get("ALERTBRIDGE_CHAOS_SEED", str(random.SystemRandom().randrange(1 << 30))))
WEBHOOK_SECRET = "chaos-webhook-secret"

# The kill -9 run: alerts spread over SEND_SECONDS, three workers, MID_ORDER_KILLS kills
# planned between placement and ack (at least MIN_MID_ORDER_KILLS must land), and
# RANDOM_KILLS at random moments, every setting at its default: a killed worker's alert
# comes back after ACK_WAIT (3 s), so no alert waits for its order longer than
# LATENCY_BOUND from its 200; with a max age of 60 s none expires.
TOTAL = 360
SEND_SECONDS = 24.0
WORKERS = 3
MID_ORDER_KILLS = 8
MIN_MID_ORDER_KILLS = 6
RANDOM_KILLS = 4
SETTLE_WITHIN = 45.0  # after the last send; the whole test stays well under 120 s
# Each kill that meets an alert (one mid-order, then others at random on the worker that
# took it back: 12 kills over 24 s on 3 workers make a chain of three on one partition
# possible) costs it up to ack_wait 3 s, or the pin and membership lapsing after
# PIN_TIMEOUT 3 s, + a membership beat 0.75 s + a pull request's 2 s: 17.25 s for three,
# plus slack for a loaded 2-core machine (15.6 s was seen once with other tests running
# beside it). An alert that waited for anything longer (a 30 s ack_wait) fails it.
LATENCY_BOUND = 24.0


def book(db: str) -> list[tuple[str, str]]:
    """(client order id, symbol) of every paper order, in the order the broker took them."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT client_order_id, symbol FROM orders ORDER BY seq").fetchall()


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    defaults = ("ALERTBRIDGE_ACK_WAIT", "ALERTBRIDGE_MAX_DELIVER", "ALERTBRIDGE_MAX_ALERT_AGE",
                "ALERTBRIDGE_FETCH_TIMEOUT", "ALERTBRIDGE_RETRY_BACKOFF")  # fmt: skip
    env = {k: v for k, v in worker_env.items() if k not in defaults}
    return {**env, "ALERTBRIDGE_PARTITIONS": "8", "ALERTBRIDGE_DEFAULT_QUANTITY": "1",
            "ALERTBRIDGE_SECRETS": WEBHOOK_SECRET}  # fmt: skip


@pytest.fixture
async def nc(nc: Client, env: dict[str, str]) -> Client:
    await provision.apply(nc.jetstream(), load(WorkerSettings, env).topology())
    return nc


async def executed_count(nc: Client, n: int) -> int | None:
    found = len([e for e in await read_events(nc.jetstream(), "events.executed.>")])
    return found if found >= n else None


async def test_per_symbol_order_holds_across_three_worker_processes(
    nc: Client, env: dict[str, str], tmp_path: Path
) -> None:
    js = nc.jetstream()
    symbols = [f"SYM{i}" for i in range(30)]
    expected: dict[str, list[str]] = {s: [] for s in symbols}
    fleet = Fleet(lambda _: env, 3, tmp_path)
    try:
        await fleet.start()
        for i in range(600):
            symbol = symbols[(i * 7) % len(symbols)]
            alert = make_alert(f"ord-{i}", symbol=symbol)
            expected[symbol].append(client_order_id("default", alert.id))
            await publish(js, alert)
        await eventually(lambda: executed_count(nc, 600), within=90, interval=0.5)
    finally:
        await fleet.stop()
    rows = book(env["ALERTBRIDGE_PAPER_DB"])
    assert len(rows) == 600
    for symbol, ids in expected.items():
        assert [cid for cid, sym in rows if sym == symbol] == ids, f"order broken for {symbol}"
    executed = await read_events(js, "events.executed.>")
    assert all(isinstance(e, Executed) for e in executed)


class Chaos:
    """The kills: at the broker, between an order's placement and its answer (the worker
    placed it and dies before it can ack), and at random moments.

    Mid-order kills are planned at alert tags spread over the run: the first placement
    of an alert at or past the next planned tag, by a worker that is up, kills that
    worker before the broker answers. Random kills pick an up worker at random times.
    """

    def __init__(self, fleet: Fleet, seed: int) -> None:
        self.fleet = fleet
        plan_rng = random.Random(seed)
        block = (TOTAL - 80) // MID_ORDER_KILLS
        self.points = [30 + k * block + plan_rng.randrange(block) for k in range(MID_ORDER_KILLS)]
        self._rng = random.Random(seed + 1)
        self.mid_order: list[Call] = []  # the placements that were answered by a kill
        self.random: list[int] = []  # the slots killed at random

    def on_placed(self, call: Call) -> None:
        """The broker's hook: runs after it recorded the placement, before its answer."""
        if not self.points or call.tag < self.points[0]:
            return
        slot = int(call.worker.removeprefix("w"))
        if not self.fleet.up[slot]:
            return  # a worker still starting: the next placement will do
        self.points.pop(0)
        self.fleet.kill(slot)  # returns once it is dead: the answer will find no one
        self.mid_order.append(call)

    async def random_kills(self) -> None:
        """RANDOM_KILLS kill -9s of an up worker, 1.5 to 4 s apart (cancel to stop early)."""
        while len(self.random) < RANDOM_KILLS:
            await asyncio.sleep(self._rng.uniform(1.5, 4.0))  # the test: a random moment
            if up := self.fleet.up_slots():
                slot = self._rng.choice(up)
                self.fleet.kill(slot)
                self.random.append(slot)


async def test_kill_9_between_placement_and_ack_loses_and_doubles_nothing(
    nc: Client, env: dict[str, str], tmp_path: Path
) -> None:
    print(f"\nchaos seed {SEED} (ALERTBRIDGE_CHAOS_SEED={SEED} to repeat)")
    js = nc.jetstream()
    alerts = plan(TOTAL, [f"CH{i}" for i in range(12)], random.Random(SEED), "chaos")
    started = time.monotonic()
    receiver = Receiver()
    async with serving_aiohttp(receiver.app()) as base:

        def env_of(slot: int) -> dict[str, str]:
            accounts = write_accounts(tmp_path / f"accounts-w{slot}.toml", f"{base}/orders/w{slot}")
            return {**env, **broker_env(accounts)}

        fleet = Fleet(env_of, WORKERS, tmp_path)
        chaos = Chaos(fleet, SEED)
        receiver.on_placed = chaos.on_placed
        try:
            await fleet.start()
            async with ingress_process(env_of(0), tmp_path / "ingress.log") as ingress:
                async with httpx.AsyncClient(timeout=10) as http:
                    sender = Sender(http, f"{ingress}/webhook/{WEBHOOK_SECRET}")
                    killer = asyncio.create_task(chaos.random_kills())
                    try:
                        await sender.send_paced(alerts, SEND_SECONDS)
                    finally:
                        killer.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await killer
                result = await settle(js, set(sender.accepted), SETTLE_WITHIN)
                await fleet.settled()
        finally:
            await fleet.stop()
    duration = time.monotonic() - started
    check_history(alerts, sender, receiver, result, chaos, fleet, duration)
    others = [e for e in await read_events(js) if isinstance(e, Rejected | Expired)]
    assert not others, f"terminal events other than executed: {others[:3]} (seed {SEED})"


def check_history(
    alerts: list[Planned],
    sender: Sender,
    receiver: Receiver,
    result: Outcome,
    chaos: Chaos,
    fleet: Fleet,
    duration: float,
) -> None:
    """Print the run's figures, then check the history against them."""
    executed = result.executed
    placements = receiver.placements()
    per_alert = Counter(e.alert_id for e in executed)
    by_id = {e.alert_id: e for e in executed}
    tag_of = {a.id: a.tag for a in alerts}
    already_done = [e for e in executed if e.already_done]
    mid_ids = {a.id for a in alerts if a.tag in {c.tag for c in chaos.mid_order}}
    placed_at = {c.tag: c.at for c in receiver.calls if c.placed}
    waits = sorted(
        (max(0.0, placed_at[a.tag] - sender.accepted_at[a.id]), a.tag)
        for a in alerts
        if a.tag in placed_at and a.id in sender.accepted_at
    )
    slowest, slowest_tag = waits[-1] if waits else (0.0, 0)
    figures = (
        f"seed {SEED}: {len(alerts)} alerts, {len(sender.accepted)} answered 200, "
        f"{len(sender.refused)} answered 503, in {duration:.1f}s; kills: "
        f"{len(chaos.mid_order)} between placement and ack, {len(chaos.random)} at random "
        f"({fleet.starts} worker starts); broker: {sum(map(len, placements.values()))} "
        f"placements, {len(receiver.calls)} order POSTs, {receiver.duplicates()} answered 409, "
        f"{receiver.lookups} lookups; executed: already_done {len(already_done)} "
        f"({len([e for e in already_done if e.alert_id not in mid_ids])} beyond the planned "
        f"kills), redelivered {len([e for e in executed if e.attempts > 1])}; 200 → order "
        f"placed: max {slowest:.2f}s (tag {slowest_tag}), "
        f"p99 {waits[int(len(waits) * 0.99)][0] if waits else 0.0:.2f}s"
    )
    print(f"chaos: {figures}")
    refused = sender.not_accepted(alerts)
    assert not refused, f"not accepted (id: statuses): {refused}; {figures}"
    first_time_dups = [i for i, d in sender.accepted.items() if d and len(sender.statuses[i]) == 1]
    assert not first_time_dups, f"new alerts answered duplicate: {first_time_dups}; {figures}"
    assert not receiver.bad_requests, f"{receiver.bad_requests[:3]}; {figures}"
    doubled = {t: [(c.client_order_id, c.worker) for c in p] for t, p in placements.items()
               if len(p) > 1}  # fmt: skip
    missing = [a.id for a in alerts if not placements.get(a.tag)]
    assert not doubled, f"alerts placed more than once (tag: orders): {doubled}; {figures}"
    assert not missing, f"alerts answered 200 but never placed: {missing}; {figures}"
    changed = {t: ids for t, ids in receiver.client_order_ids().items() if len(ids) > 1}
    assert not changed, f"client order id changed between deliveries: {changed}; {figures}"
    assert receiver.placed_in_order() == by_symbol(alerts), f"per-symbol order broken; {figures}"
    dead = [(d.alert_id, d.reason, d.last_error) for d in result.dead]
    assert not dead, f"dead-lettered (a failure, not a delivery): {dead[:5]}; {figures}"
    unexecuted = sorted(result.missing(set(tag_of)))
    assert not unexecuted, f"no executed event for {len(unexecuted)}: {unexecuted[:10]}; {figures}"
    assert set(per_alert) == set(tag_of), f"executed events for unknown alerts; {figures}"
    twice = {i: n for i, n in per_alert.items() if n != 1}
    assert not twice, f"alerts with more than one executed event: {twice}; {figures}"
    assert len(chaos.mid_order) >= MIN_MID_ORDER_KILLS, f"too few mid-order kills; {figures}"
    not_found = [c.tag for c in chaos.mid_order if not by_id[alerts[c.tag - 1].id].already_done]
    assert not not_found, f"killed mid-order, not found as already_done: {not_found}; {figures}"
    assert len(already_done) >= len(chaos.mid_order), figures
    assert slowest <= LATENCY_BOUND, f"an alert waited {slowest:.1f}s for its order; {figures}"


async def test_nats_restart_mid_stream_loses_nothing_and_dedup_survives(
    tmp_path: Path, worker_env: dict[str, str]
) -> None:
    server = NatsServer(tmp_path / "store").start()
    receiver = Receiver()
    alerts = plan(300, [f"R{i}" for i in range(10)], random.Random(SEED), "rs")
    try:
        async with serving_aiohttp(receiver.app()) as base:
            accounts = write_accounts(tmp_path / "accounts.toml", f"{base}/orders/w0")
            env = {**worker_env, **broker_env(accounts), "ALERTBRIDGE_NATS_URL": server.url,
                   "ALERTBRIDGE_SECRETS": WEBHOOK_SECRET, "ALERTBRIDGE_PUBLISH_TIMEOUT": "0.5",
                   "ALERTBRIDGE_MAX_ALERT_AGE": "0"}  # fmt: skip
            await provisioned(env)
            fleet = Fleet(lambda _: env, 1, tmp_path)
            try:
                await fleet.start()
                async with ingress_process(env, tmp_path / "ingress.log") as ingress:
                    await _restart_under_the_ingress(server, receiver, alerts, ingress)
            finally:
                await fleet.stop()
    finally:
        server.stop()


async def _restart_under_the_ingress(
    server: NatsServer, receiver: Receiver, alerts: list[Planned], ingress: str
) -> None:
    url = f"{ingress}/webhook/{WEBHOOK_SECRET}"
    async with httpx.AsyncClient(timeout=10) as http:
        # TradingView resends 5xx; this sender resends for as long as a restart takes.
        sender = Sender(http, url, resend_after=0.2, resends=150)
        for alert in alerts[:100]:
            await sender.send(alert)
        server.stop()  # mid-stream: the next sends see 503 until it is back
        sending = asyncio.create_task(sender.send_paced(alerts[100:], 0.0))

        async def outage_seen() -> bool | None:
            return True if sender.refused else None

        await eventually(outage_seen, within=20)  # the ingress said 503, never a lie
        server.start()
        await sending
        assert not sender.not_accepted(alerts), sender.not_accepted(alerts)

        check = await nats.connect(server.url)
        try:
            result = await settle(check.jetstream(), {a.id for a in alerts}, within=60)
        finally:
            await check.close()
        again = alerts[0], alerts[50], alerts[150], alerts[299]
        for alert in again:
            await sender.send(alert)
        dedup = [sender.accepted[a.id] for a in again]
    placements = receiver.placements()
    doubled = {t: len(p) for t, p in placements.items() if len(p) > 1}
    assert not doubled, f"placed more than once: {doubled} (seed {SEED})"
    assert [a.tag for a in alerts if not placements.get(a.tag)] == [], f"seed {SEED}"
    assert receiver.placed_in_order() == by_symbol(alerts)
    assert not result.dead, result.dead
    assert sorted(Counter(e.alert_id for e in result.executed).values()) == [1] * len(alerts)
    assert dedup == [True] * 4, dedup  # dedup survived the restart
    print(f"\nnats restart (seed {SEED}): {len(sender.refused)} answers were 503; resent")
