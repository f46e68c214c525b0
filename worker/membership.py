"""Workers share the partitions: each pulls only its own share, worked out from the live
members listed in the `WORKERS` KV bucket.

Membership is a key per worker process (`$KV.WORKERS.<member>`), put again every
`BEAT_EVERY` seconds; the bucket's max age (`contracts.topology.PIN_TIMEOUT`) drops the
key of a worker that stopped putting it, a dead one. A worker that stops deletes its key,
so the others take its share at once. Every `LOOK_EVERY` seconds each worker reads every
key in one batched direct get and works out its share from the names alone (`share`):
every worker that sees the same members computes the same assignment, with no
coordinator and no election. A worker always counts itself, so it pulls its share from
its first look, before the others have seen its key.

Views differ for a moment while a worker joins or leaves: two workers may both pull a
partition, or none does. Neither breaks a promise. The partition consumer still hands out
one alert at a time (max_ack_pending 1) and pins one puller (`pinned_client`): the one
that held it keeps it until it lets the partition go (and unpins it, `worker.pull.unpin`)
or stops asking for the pin timeout (dies); only then does the server pin the other, and
only once the alert in flight is settled. So per-symbol order, no loss and no double
placement hold through every handover; what membership buys is that partitions are not
contended. Synadia's partitioned consumer groups (orbit.go `pcgroups`) keep the member
list in KV the same way; there, members are listed by an operator and instances of one
member fail over through the pin, here members list themselves and expire.

The assignment is balanced (shares differ by one partition at most) and moves few
partitions when a member joins or leaves: each partition goes to the member that ranks
it highest (rendezvous hashing) among those with room left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import socket
from typing import TYPE_CHECKING, Final

from contracts.risk import KV_OPERATION, kv_subject
from contracts.topology import MEMBERS_BUCKET, MEMBERS_STREAM, PIN_TIMEOUT
from ops.platform import directget
from ops.platform.nats_compat import api_prefix, client_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from nats.js.client import JetStreamContext

log = logging.getLogger("worker.membership")

BEAT_EVERY: Final = PIN_TIMEOUT / 4  # a key lives PIN_TIMEOUT: three beats may be lost
LOOK_EVERY: Final = 0.5  # seconds between reads of the member list
READ_TIMEOUT: Final = 2.0
_BATCH: Final = 10_000  # keys per read: one per worker process
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")


class MembershipError(Exception):
    """The member list could not be read (the membership loop fails and is restarted)."""


def member_name() -> str:
    """This process's member name: host, pid and a random part (a pid is reused)."""
    raw = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    return _UNSAFE.sub("_", raw)


def _rank(member: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assignment(members: Iterable[str], partitions: int) -> dict[str, frozenset[int]]:
    """Each partition to one member: shares differ by one at most, and a member joining
    or leaving moves few partitions between the others (rendezvous ranking)."""
    names = sorted(set(members))
    if not names:
        return {}
    base, extra = divmod(partitions, len(names))
    room = {name: base + (i < extra) for i, name in enumerate(names)}
    owned: dict[str, set[int]] = {name: set() for name in names}
    for p in range(partitions):
        best = max((n for n in names if room[n]), key=lambda n: _rank(n, p))
        owned[best].add(p)
        room[best] -= 1
    return {name: frozenset(ps) for name, ps in owned.items()}


def share(members: Iterable[str], partitions: int, me: str) -> frozenset[int]:
    """The partitions `me` pulls when these are the live members (`me` always counts)."""
    return assignment({*members, me}, partitions)[me]


class Membership:
    """This worker's key in the members bucket, and the bucket's live keys."""

    def __init__(self, js: JetStreamContext, name: str) -> None:
        self.name = name
        self._js = js
        self._key = kv_subject(MEMBERS_BUCKET, name)
        self._read = f"{api_prefix(js)}.DIRECT.GET.{MEMBERS_STREAM}"
        self._body = json.dumps(
            {"multi_last": [kv_subject(MEMBERS_BUCKET, ">")], "batch": _BATCH}
        ).encode()
        self._prefix = kv_subject(MEMBERS_BUCKET, "")

    async def beat(self) -> None:
        """Put this worker's key (again): it lives `PIN_TIMEOUT` from now."""
        await self._js.publish(self._key, b"", timeout=READ_TIMEOUT)

    async def leave(self) -> None:
        """Delete this worker's key: the others take its share at their next look."""
        await self._js.publish(self._key, b"", timeout=READ_TIMEOUT, headers={KV_OPERATION: "DEL"})

    async def members(self) -> set[str]:
        """The names whose key is live (put, not deleted, not expired)."""
        try:
            msgs = await directget.batch(client_of(self._js), self._read, self._body, READ_TIMEOUT)
        except directget.DirectGetError as exc:
            why = f"status {exc.status}" if exc.status else "no answer"
            raise MembershipError(f"member list unreadable: {why}") from None
        return {
            (msg.headers or {}).get("Nats-Subject", "").removeprefix(self._prefix)
            for msg in msgs
            if not (msg.headers or {}).get(KV_OPERATION)  # a deleted key: a member that left
        }


class Share:
    """Keeps this worker a member and its share of the partitions up to date."""

    def __init__(self, membership: Membership, partitions: int) -> None:
        self._membership = membership
        self._partitions = partitions
        self.members: frozenset[str] = frozenset()  # as last seen

    async def run(
        self, stopping: asyncio.Event, apply: Callable[[frozenset[int]], Awaitable[None]]
    ) -> None:
        """Beat and look until `stopping`, calling `apply` with each new share; then
        leave. A beat or a look that fails ends the run (its supervisor restarts it);
        the partitions already applied go on being pulled meanwhile."""
        me = self._membership.name
        loop = asyncio.get_running_loop()
        beaten = -BEAT_EVERY
        owned: frozenset[int] | None = None
        while not stopping.is_set():
            if loop.time() - beaten >= BEAT_EVERY:
                await self._membership.beat()
                beaten = loop.time()
            members = frozenset(await self._membership.members() | {me})
            mine = share(members, self._partitions, me)
            if mine != owned:
                log.info(
                    "member %s: %d members, pulling %d of %d partitions",
                    me, len(members), len(mine), self._partitions,
                )  # fmt: skip
                await apply(mine)
                owned = mine
            self.members = members
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOOK_EVERY):
                    await stopping.wait()
        try:
            await self._membership.leave()
        except Exception as exc:  # noqa: BLE001 - the key expires by itself
            log.warning("member %s could not leave (its key expires): %r", me, exc)
