"""Workers share the partitions (worker.membership), checked from outside with real
processes: three workers under load through the real ingress, one killed with kill -9,
a new one started. The broker's history (tests.chaos_broker: every order POST, with the
worker that sent it) must show nothing lost, nothing doubled, per-symbol order held
across every handover, each symbol served by one worker at a time (a handful of
handovers, where workers competing for every partition would alternate all along), the
dead worker's symbols taken over, and the newcomer taking a share within seconds.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from contracts.subjects import ALERTS_STREAM, partition_filter
from contracts.topology import PARTITION_GROUP, PIN_TIMEOUT, partition_durable
from ops.platform import provision
from ops.platform.settings import load
from tests.chaos_broker import Call, Receiver, broker_env, write_accounts
from tests.fleet import Fleet, ingress_process
from tests.history import settle
from tests.support import eventually, serving_aiohttp
from tests.webhook_sender import Sender, by_symbol, plan
from worker.membership import Membership
from worker.settings import WorkerSettings

SEED = random.SystemRandom().randrange(1 << 30)
WEBHOOK_SECRET = "partition-groups-secret"
TOTAL = 480
SYMBOLS = 24
PARTITIONS = 8
SEND_SECONDS = 24.0
KILL_AFTER = 6.0  # seconds into the sending
JOIN_AFTER = 12.0
SETTLE_WITHIN = 45.0
# Handovers one symbol may see: the kill (the dead worker's partitions move), the join
# (the newcomer's share moves to it), and one more each while the views differ.
MAX_HANDOVERS = 4
# From the kill to the first order of each symbol the dead worker served: its key
# expires (PIN_TIMEOUT), the others look (0.5 s), its pin lapses, and the alert in flight
# comes back (ack_wait); doubled for a loaded 2-core machine.
TAKEOVER_BOUND = 2 * (PIN_TIMEOUT + 3.0)
JOIN_BOUND = 10.0  # from the newcomer's /readyz to its first order


@pytest.fixture
def env(worker_env: dict[str, str]) -> dict[str, str]:
    """Every setting at its default (ack_wait 3 s), but partitions and quantity."""
    keep = ("ALERTBRIDGE_NATS_URL", "ALERTBRIDGE_PAPER_DB", "ALERTBRIDGE_HEALTH_PORT")
    return {**{k: worker_env[k] for k in keep}, "ALERTBRIDGE_PARTITIONS": str(PARTITIONS),
            "ALERTBRIDGE_DEFAULT_QUANTITY": "1", "ALERTBRIDGE_SECRETS": WEBHOOK_SECRET}  # fmt: skip


@pytest.fixture
async def nc(nc: Client, env: dict[str, str]) -> Client:
    await provision.apply(nc.jetstream(), load(WorkerSettings, env).topology())
    return nc


def handovers(calls: list[Call]) -> dict[str, int]:
    """Per symbol, how often the worker that sent its orders changed, in the broker's order."""
    last: dict[str, str] = {}
    changes: Counter[str] = Counter()
    for call in calls:
        if call.symbol in last and last[call.symbol] != call.worker:
            changes[call.symbol] += 1
        last[call.symbol] = call.worker
    return {symbol: changes[symbol] for symbol in last}


async def members(nc: Client, n: int) -> bool | None:
    """True once `n` workers are live members (read as a bystander: it does not beat)."""
    return True if len(await Membership(nc.jetstream(), "bystander").members()) == n else None


async def test_workers_share_partitions_through_a_kill_and_a_join(
    nc: Client, env: dict[str, str], tmp_path: Path
) -> None:
    print(f"\npartition groups seed {SEED}")
    alerts = plan(TOTAL, [f"PG{i}" for i in range(SYMBOLS)], random.Random(SEED), "pg")
    receiver = Receiver()
    async with serving_aiohttp(receiver.app()) as base:

        def env_of(name: str) -> dict[str, str]:
            accounts = write_accounts(tmp_path / f"accounts-{name}.toml", f"{base}/orders/{name}")
            return {**env, **broker_env(accounts)}

        fleet = Fleet(lambda slot: env_of(f"w{slot}"), 3, tmp_path)
        (tmp_path / "new").mkdir()
        newcomer = Fleet(lambda _: env_of("new"), 1, tmp_path / "new")
        try:
            await fleet.start()
            await eventually(lambda: members(nc, 3), within=10)
            async with ingress_process(env_of("w0"), tmp_path / "ingress.log") as ingress:
                async with httpx.AsyncClient(timeout=10) as http:
                    sender = Sender(http, f"{ingress}/webhook/{WEBHOOK_SECRET}")
                    sending = asyncio.create_task(sender.send_paced(alerts, SEND_SECONDS))
                    await asyncio.sleep(KILL_AFTER)  # the test: a moment under load
                    victim = fleet.procs[1]
                    assert victim is not None
                    fleet.up[1] = False
                    victim.kill()  # kill -9, and no restart: a worker gone for good
                    victim.wait(10)
                    killed_at = time.monotonic()
                    await asyncio.sleep(JOIN_AFTER - KILL_AFTER)
                    await newcomer.start()
                    joined_at = time.monotonic()
                    await sending
                result = await settle(nc.jetstream(), set(sender.accepted), SETTLE_WITHIN)
        finally:
            await newcomer.stop()
            await fleet.stop()

    calls = receiver.calls
    changes = handovers(calls)
    before_kill = {c.symbol: c.worker for c in calls if c.at < killed_at}  # the last one's
    served_by_victim = {symbol for symbol, worker in before_kill.items() if worker == "w1"}
    takeover = max(
        (
            next(c.at for c in calls if c.symbol == s and c.at > killed_at) - killed_at
            for s in served_by_victim
            if any(c.symbol == s and c.at > killed_at for c in calls)
        ),
        default=0.0,
    )
    new_calls = [c for c in calls if c.worker == "new"]
    joined_in = (new_calls[0].at - joined_at) if new_calls else float("inf")
    placements = receiver.placements()
    figures = (
        f"seed {SEED}: {len(sender.accepted)} of {TOTAL} answered 200; broker: "
        f"{sum(map(len, placements.values()))} placements, {len(calls)} POSTs, "
        f"{receiver.duplicates()} answered 409; orders per worker "
        f"{dict(sorted(Counter(c.worker for c in calls).items()))}; handovers per symbol: "
        f"max {max(changes.values())}, total {sum(changes.values())}; the dead worker's "
        f"{len(served_by_victim)} symbols served again within {takeover:.2f}s of the kill; "
        f"the newcomer's first order {joined_in:.2f}s after it was ready, "
        f"{len({c.symbol for c in new_calls})} symbols"
    )
    print(f"partition groups: {figures}")
    assert not sender.not_accepted(alerts), figures
    doubled = {t: [(c.client_order_id, c.worker) for c in p] for t, p in placements.items()
               if len(p) > 1}  # fmt: skip
    assert not doubled, f"placed more than once: {doubled}; {figures}"
    missing = [a.id for a in alerts if not placements.get(a.tag)]
    assert not missing, f"answered 200, never placed: {missing}; {figures}"
    assert receiver.placed_in_order() == by_symbol(alerts), f"per-symbol order broken; {figures}"
    per_alert = Counter(e.alert_id for e in result.executed)
    assert sorted(per_alert.values()) == [1] * TOTAL, f"executed events; {figures}"
    assert not result.dead, f"dead-lettered: {result.dead[:3]}; {figures}"
    assert max(changes.values()) <= MAX_HANDOVERS, f"symbols passed around; {figures}"
    assert served_by_victim and takeover <= TAKEOVER_BOUND, figures
    assert new_calls and joined_in <= JOIN_BOUND, f"the newcomer took no share; {figures}"


async def _consumer_config(nc: Client, durable: str) -> dict[str, object]:
    answer = await nc.request(f"$JS.API.CONSUMER.INFO.ALERTS.{durable}", b"", timeout=2)
    config: dict[str, object] = json.loads(answer.data)["config"]
    return config


async def test_provisioning_pins_the_partition_consumers_and_keeps_them_pinned(
    nc: Client, env: dict[str, str]
) -> None:
    """An existing consumer without the group (an older release's) gets it; provisioning
    again keeps it (nats-py's own config would drop it: an update that leaves the fields
    out turns pinning off)."""
    js = nc.jetstream()
    durable = partition_durable(0)
    await js.add_consumer(ALERTS_STREAM, ConsumerConfig(
        durable_name=durable, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1,
        filter_subject=partition_filter(0)))  # fmt: skip
    assert "priority_policy" not in await _consumer_config(nc, durable)
    topology = load(WorkerSettings, env).topology()
    for _ in range(2):
        await provision.apply(js, topology)
        config = await _consumer_config(nc, durable)
        assert config["priority_groups"] == [PARTITION_GROUP]
        assert config["priority_policy"] == "pinned_client"
        assert config["priority_timeout"] == PIN_TIMEOUT * 1e9
