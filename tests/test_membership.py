"""Workers' membership (worker.membership): the assignment of partitions to members, the
member keys on a real server (a beat shows, a leave or an expiry removes), and their doors
on the real deploy/nats-server.conf: the worker beats, reads, leaves and unpins and can do
nothing else to the bucket; the ingress cannot touch it."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.subjects import ALERTS_STREAM
from contracts.topology import MEMBERS_STREAM, PARTITION_GROUP, PIN_TIMEOUT, partition_durable
from ops.platform.settings import DEFAULT_JS_API, ROLE_JS_API
from tests.secured import DENIED, Secured
from tests.support import eventually
from worker.membership import Membership, MembershipError, assignment, member_name, share
from worker.pull import unpin

SEED = random.SystemRandom().randrange(1 << 30)


@pytest.mark.parametrize(("partitions", "members"), [(8, 3), (16, 1), (64, 4), (256, 3), (2, 5)])
def test_every_partition_has_one_member_and_shares_differ_by_one_at_most(
    partitions: int, members: int
) -> None:
    names = [f"w{i}" for i in range(members)]
    owned = assignment(names, partitions)
    every = sorted(p for ps in owned.values() for p in ps)
    assert every == list(range(partitions))  # each exactly once
    sizes = [len(ps) for ps in owned.values()]
    assert max(sizes) - min(sizes) <= 1, sizes
    assert assignment(reversed(names), partitions) == owned  # order of discovery: no matter


def test_a_member_joining_or_leaving_moves_little_besides_its_own_share() -> None:
    """Rendezvous ranking: far fewer moves than a round robin, which moves most."""
    rng = random.Random(SEED)
    names = [f"host-{rng.randrange(1 << 20)}" for _ in range(4)]
    before = assignment(names[:3], 256)
    after = assignment(names, 256)
    joined = after[names[3]]
    moved_between_others = sum(len(before[n] - after[n] - joined) for n in names[:3])
    assert len(joined) == 64
    assert moved_between_others <= 40, f"{moved_between_others} moved (seed {SEED})"
    left = assignment(names[1:3], 256)
    kept = sum(len(before[n] & left[n]) for n in names[1:3])
    assert kept >= len(before[names[1]]) + len(before[names[2]]) - 40, f"seed {SEED}"


def test_a_worker_counts_itself_and_its_name_is_a_key() -> None:
    assert share([], 8, "me") == frozenset(range(8))
    assert share(["me", "me"], 8, "me") == frozenset(range(8))
    name = member_name()
    assert name.replace("-", "").replace("_", "").isalnum() and name != member_name()


async def test_a_beat_shows_a_leave_removes_and_a_dead_members_key_expires(
    secured: Secured, as_worker: Client, as_ops: JetStreamContext
) -> None:
    before = len(secured.violations("worker"))
    js = secured.js("worker", as_worker)
    alive, leaving, dying = (Membership(js, n) for n in ("alive", "leaving", "dying"))
    for member in (alive, leaving, dying):
        await member.beat()
    assert await alive.members() == {"alive", "leaving", "dying"}
    await leaving.leave()
    assert await alive.members() == {"alive", "dying"}
    stopped_at = time.monotonic()  # "dying" beats no more; "alive" goes on

    async def expired() -> bool | None:
        await alive.beat()
        return True if await alive.members() == {"alive"} else None

    await eventually(expired, within=PIN_TIMEOUT + 3, interval=0.2)
    gone_after = time.monotonic() - stopped_at
    print(f"\nmembership: a dead member's key was gone {gone_after:.2f}s after its last beat")
    assert gone_after >= PIN_TIMEOUT - 0.5  # not before its time either
    await unpin(js, stream=ALERTS_STREAM, durable=partition_durable(0), group=PARTITION_GROUP)
    await as_worker.flush()
    assert secured.violations("worker")[before:] == []


async def test_an_unreadable_member_list_fails_the_look(
    secured: Secured, as_worker: Client, as_ops: JetStreamContext
) -> None:
    await as_ops.delete_stream(MEMBERS_STREAM)  # not provisioned (as_ops reprovisions next)
    with pytest.raises(MembershipError, match="member list unreadable"):
        await Membership(secured.js("worker", as_worker), "lonely").members()


def _worker_attempts() -> dict[str, Callable[[JetStreamContext], Awaitable[object]]]:
    return {
        "delete the bucket": lambda js: js.delete_stream(MEMBERS_STREAM),
        "purge the bucket": lambda js: js.purge_stream(MEMBERS_STREAM),
        "read a member by sequence": lambda js: js.get_msg(MEMBERS_STREAM, seq=1),
        "delete a member message": lambda js: js.delete_msg(MEMBERS_STREAM, 1),
        "watch the members": lambda js: js.subscribe(
            "$KV.WORKERS.>", stream=MEMBERS_STREAM, ordered_consumer=True
        ),
    }


@pytest.mark.parametrize("attempt", list(_worker_attempts()))
async def test_the_worker_cannot_delete_purge_or_watch_the_members(
    secured: Secured, as_worker: Client, as_ops: JetStreamContext, attempt: str
) -> None:
    await Membership(secured.js("worker", as_worker), "kept").beat()
    with pytest.raises(DENIED):
        js = secured.js("worker", as_worker, timeout=0.5)  # type: ignore[arg-type]
        await asyncio.wait_for(_worker_attempts()[attempt](js), 1)
    info = await as_ops.stream_info(MEMBERS_STREAM)
    assert info.state.messages == 1 and info.config.max_age == PIN_TIMEOUT


def _ingress_attempts() -> dict[str, Callable[[JetStreamContext], Awaitable[object]]]:
    return {
        "join": lambda js: js.publish("$KV.WORKERS.intruder", b""),
        "remove a member": lambda js: js.publish(
            "$KV.WORKERS.kept", b"", headers={"KV-Operation": "DEL"}
        ),
        "read the members": lambda js: js.get_msg(
            MEMBERS_STREAM, subject="$KV.WORKERS.kept", direct=True
        ),
    }


@pytest.mark.parametrize("prefix", [ROLE_JS_API, DEFAULT_JS_API])
@pytest.mark.parametrize("attempt", list(_ingress_attempts()))
async def test_the_ingress_cannot_touch_the_members(
    secured: Secured,
    as_ingress: Client,
    as_worker: Client,
    as_ops: JetStreamContext,
    attempt: str,
    prefix: str,
) -> None:
    kept = Membership(secured.js("worker", as_worker), "kept")
    await kept.beat()
    with pytest.raises(DENIED):
        js = as_ingress.jetstream(prefix=prefix, timeout=0.5)
        await asyncio.wait_for(_ingress_attempts()[attempt](js), 1)
    assert await kept.members() == {"kept"}
    assert (await as_ops.stream_info(MEMBERS_STREAM)).state.messages == 1


async def test_the_ingress_cannot_unpin_a_partition(
    secured: Secured, as_ingress: Client, as_ops: JetStreamContext
) -> None:
    subject = f"{ROLE_JS_API}.CONSUMER.UNPIN.{ALERTS_STREAM}.{partition_durable(0)}"
    with pytest.raises(DENIED):
        await as_ingress.request(subject, b'{"group": "workers"}', timeout=0.5)
