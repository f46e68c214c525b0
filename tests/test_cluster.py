"""The same code on a 3-node JetStream cluster with R3 streams: kill the ALERTS leader
with SIGKILL while alerts flow through the real ingress, then bring it back.

Checked from outside, as docs/topology.md promises it: while the leader moves the
ingress answers 503 (never 200 for an alert it did not store: every 200 is in ALERTS);
the sender resends 503s, as TradingView does; every alert, answered 200 at once or
after 503s, is placed exactly once, counted at the broker (tests.chaos_broker).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import APIError, ServiceUnavailableError

from contracts.subjects import ALERTS_STREAM
from ops.platform import provision
from ops.platform.settings import load
from tests.chaos_broker import Receiver, broker_env, write_accounts
from tests.fleet import Fleet, ingress_process
from tests.history import UNAVAILABLE, Outcome, settle, stored_alert_ids
from tests.support import NatsServer, cluster, eventually, serving_aiohttp
from tests.webhook_sender import Planned, Sender, by_symbol, plan
from worker.settings import WorkerSettings

SECRET = "cluster-secret-1"
TOTAL = 300
SEND_SECONDS = 10.0
KILL_AFTER = TOTAL // 3  # alerts answered 200 before the leader is killed
# TradingView cancels a request after 3 s and does not resend a timeout: a 503 must come
# before that (the ingress answers it after ALERTBRIDGE_PUBLISH_TIMEOUT, 1 s here).
TRADINGVIEW_CANCELS_AFTER = 3.0
SEED = int(os.environ.get("ALERTBRIDGE_CHAOS_SEED", str(random.SystemRandom().randrange(1 << 30))))


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NatsServer]]:
    servers = [s.start() for s in cluster(tmp_path)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def env(nodes: list[NatsServer], tmp_path: Path) -> dict[str, str]:
    return {
        "ALERTBRIDGE_NATS_URL": ",".join(n.url for n in nodes),
        "ALERTBRIDGE_REPLICAS": "3",
        "ALERTBRIDGE_PARTITIONS": "4",
        "ALERTBRIDGE_ACK_WAIT": "3",
        "ALERTBRIDGE_FETCH_TIMEOUT": "0.5",
        "ALERTBRIDGE_PAPER_DB": str(tmp_path / "paper.db"),
        "ALERTBRIDGE_SECRETS": SECRET,
        "ALERTBRIDGE_PUBLISH_TIMEOUT": "1.0",
        "ALERTBRIDGE_MAX_ALERT_AGE": "0",
    }


@pytest.fixture
async def nc(nodes: list[NatsServer], env: dict[str, str]) -> AsyncIterator[Client]:
    client = await nats.connect([n.url for n in nodes], max_reconnect_attempts=-1)
    settings = load(WorkerSettings, env)

    async def provisioned() -> bool | None:
        try:  # the meta leader is elected a moment after the routes connect
            await provision.apply(client.jetstream(), settings.topology())
        except (ServiceUnavailableError, APIError, TimeoutError):
            return None
        return True

    await eventually(provisioned, within=30, interval=0.5)
    yield client
    await client.close()


async def leader(nc: Client) -> str | None:
    """The ALERTS leader's server name; None while there is none (or no answer)."""
    try:  # a short deadline: the probe times the leader's move, so it must not lag it
        info = await nc.jetstream(timeout=0.5).stream_info(ALERTS_STREAM)
    except UNAVAILABLE:
        return None
    return info.cluster.leader if info.cluster is not None else None


async def caught_up(nc: Client, stored: int) -> bool | None:
    """Every replica of ALERTS is online and current again, holding `stored` alerts."""
    info = await nc.jetstream().stream_info(ALERTS_STREAM)
    replicas = (info.cluster.replicas if info.cluster else None) or []
    ok = len(replicas) == 2 and all(r.current and not r.offline for r in replicas)
    return True if ok and info.state.messages >= stored else None


async def test_leader_killed_while_alerts_flow(
    nodes: list[NatsServer], env: dict[str, str], nc: Client, tmp_path: Path
) -> None:
    print(f"\ncluster seed {SEED} (ALERTBRIDGE_CHAOS_SEED={SEED} to repeat)")
    alerts = plan(TOTAL, [f"C{i}" for i in range(12)], random.Random(SEED), "cl")
    receiver = Receiver()
    async with serving_aiohttp(receiver.app()) as base:
        accounts = write_accounts(tmp_path / "accounts.toml", f"{base}/orders/c")
        full = {**env, **broker_env(accounts)}
        fleet = Fleet(lambda _: full, 2, tmp_path)
        try:
            await fleet.start()
            async with ingress_process(full, tmp_path / "ingress.log") as ingress:
                run = await _kill_the_leader_mid_stream(nodes, nc, alerts, f"{ingress}/webhook")
        finally:
            await fleet.stop()
    _check(alerts, receiver, *run)


Run = tuple[Sender, float, float, Outcome, list[str]]


async def _kill_the_leader_mid_stream(
    nodes: list[NatsServer], nc: Client, alerts: list[Planned], webhook: str
) -> Run:
    """Send, kill the leader once KILL_AFTER alerts are in, keep sending; then wait for the
    new leader, the executions, and the old leader's replica to catch up."""
    async with httpx.AsyncClient(timeout=10) as http:
        sender = Sender(http, f"{webhook}/{SECRET}", resend_after=0.5, resends=60)
        sending = asyncio.create_task(sender.send_paced(alerts, SEND_SECONDS))

        async def enough_in() -> bool | None:
            return True if len(sender.accepted) >= KILL_AFTER else None

        await eventually(enough_in, within=30)
        old = await eventually(lambda: leader(nc), within=10)
        victim = nodes[int(old.removeprefix("n"))]
        killed_at = time.monotonic()
        victim.kill()  # SIGKILL, while the sender's alerts are in flight

        async def new_leader() -> str | None:
            found = await leader(nc)
            return found if found not in (None, old) else None

        await eventually(new_leader, within=30, interval=0.1)
        moved_after = time.monotonic() - killed_at
        await sending
    result = await settle(nc.jetstream(), {a.id for a in alerts}, within=45)
    stored = await stored_alert_ids(nc.jetstream())
    victim.start()  # back, same store: it catches up from the others
    await eventually(lambda: caught_up(nc, len(stored)), within=30, interval=0.5)
    return sender, killed_at, moved_after, result, stored


def _check(
    alerts: list[Planned],
    receiver: Receiver,
    sender: Sender,
    killed_at: float,
    moved_after: float,
    result: Outcome,
    stored: list[str],
) -> None:
    refused_after_kill = [took for at, took in sender.refused if at >= killed_at]
    resent = [a.id for a in alerts if 503 in sender.statuses[a.id]]
    slowest = max((took for _, took in sender.refused), default=0.0)
    back = min((t for t in sender.answered_200 if t > killed_at), default=killed_at) - killed_at
    placements = receiver.placements()
    figures = (
        f"seed {SEED}: a new leader answered {moved_after:.1f}s after the kill, the first "
        f"200 after it came {back:.1f}s after; the longest an alert waited "
        f"from its first sending to its 200: {max(sender.waited.values(), default=0.0):.1f}s; "
        f"{len(sender.refused)} answers were 503 ({len(refused_after_kill)} after the kill, "
        f"slowest {slowest:.2f}s), {len(resent)} alerts resent after a 503; broker: "
        f"{sum(map(len, placements.values()))} placements, {len(receiver.calls)} POSTs, "
        f"{receiver.duplicates()} answered 409"
    )
    print(f"cluster: {figures}")
    others = {i: s for i, s in sender.statuses.items() if set(s) - {200, 503}}
    assert not others, f"answers other than 200 and 503 (never a 504): {others}; {figures}"
    assert not sender.not_accepted(alerts), f"{sender.not_accepted(alerts)}; {figures}"
    assert refused_after_kill, f"no 503 while the leader moved; {figures}"
    assert slowest < TRADINGVIEW_CANCELS_AFTER, f"a 503 came too late to be resent; {figures}"
    unstored = set(sender.accepted) - set(stored)
    assert not unstored, f"answered 200 but not in ALERTS: {sorted(unstored)}; {figures}"
    doubled = {t: len(p) for t, p in placements.items() if len(p) > 1}
    missing = [a.id for a in alerts if not placements.get(a.tag)]
    assert not doubled, f"placed more than once (tag: placements): {doubled}; {figures}"
    assert not missing, f"answered 200 but never placed: {missing}; {figures}"
    assert receiver.placed_in_order() == by_symbol(alerts), f"per-symbol order; {figures}"
    dead = [(d.alert_id, d.reason, d.last_error) for d in result.dead]
    assert not dead, f"dead-lettered (a failure, not a delivery): {dead[:5]}; {figures}"
    unexecuted = sorted(result.missing({a.id for a in alerts}))
    assert not unexecuted, f"no executed event for {unexecuted[:10]}; {figures}"
    twice = {i: n for i, n in Counter(e.alert_id for e in result.executed).items() if n != 1}
    assert not twice, f"more than one executed event: {twice}; {figures}"
    assert not receiver.bad_requests, f"{receiver.bad_requests[:3]}; {figures}"
