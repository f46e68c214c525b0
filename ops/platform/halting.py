"""The kill switch, from the operators' side: halt or resume, and see the halts in force.

One implementation for `alertbridge halt` / `resume` / `halts` (ops.tools.cli_halt) and
the console's halt and resume buttons. A halt is a value on the HALTS bucket's
`global` or `account.<account>` key (contracts/risk.py), then a `Halted` or `Resumed`
event. It needs a publish on those two keys and on `events.halted.>` /
`events.resumed.>`; reading the halts in force needs the batched direct get on
KV_HALTS (`read_halts`). The ops role has all of them; deploy/nats-server.conf gives
the console exactly these.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Final

import msgspec

from contracts.headers import MSG_ID
from contracts.messages import Halted, Resumed, event_encoder, halt_event_msg_id
from contracts.risk import (
    EVERY_ACCOUNT,
    HALTS_BUCKET,
    HALTS_STREAM,
    KV_OPERATION,
    Halt,
    Stored,
    account_halt_subject,
    active_halt,
    breaker_subject,
    global_halt_subject,
    halt_decoder,
    halt_encoder,
    kv_subject,
)
from contracts.subjects import event_subject
from ops.platform import directget

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from contracts.messages import HaltEvent

READ_TIMEOUT: Final = 2.0
_BATCH: Final = 1000  # keys per read; a bucket holds three per account at most


class HaltsUnreadableError(Exception):
    """The halt keys could not be read (the message says why)."""


class HaltRow(msgspec.Struct, frozen=True, kw_only=True):
    """One halted account (or `*`: every account), as `halts --json` prints it."""

    account: str
    reason: str
    by: str
    since: datetime


async def record(js: JetStreamContext, halt: Halt) -> int:
    """Write a halt key (global for EVERY_ACCOUNT), then its event; the key's sequence."""
    every = halt.account == EVERY_ACCOUNT
    subject = global_halt_subject() if every else account_halt_subject(halt.account)
    ack = await js.publish(subject, halt_encoder.encode(halt))
    event: HaltEvent
    halt_id = f"ops:{ack.seq}"
    if halt.halted:
        event = Halted(
            account=halt.account, reason=halt.reason, by="ops", at=halt.at, halt_id=halt_id
        )
    else:
        event = Resumed(account=halt.account, at=halt.at, halt_id=halt_id)
    await js.publish(
        event_subject("halted" if halt.halted else "resumed", halt.account, "ops"),
        event_encoder.encode(event),
        headers={MSG_ID: halt_event_msg_id(event)},
    )
    return ack.seq


def halt_value(msg: Msg) -> Halt | None:
    """A halt key's message as a value: a delete or purge marker, or anything that is not
    a `Halt` (a breaker message still trips: shown with no reason), holds none."""
    if (msg.headers or {}).get(KV_OPERATION):
        return None
    try:
        return halt_decoder.decode(msg.data)
    except msgspec.DecodeError:
        return None


async def read_halts(nc: Client, js_api: str) -> list[HaltRow]:
    """The halts in force, read in one batched direct get on KV_HALTS through `js_api`
    (the connection's JetStream API prefix). HaltsUnreadableError when it fails."""
    body = json.dumps({"multi_last": [kv_subject(HALTS_BUCKET, ">")], "batch": _BATCH})
    subject = f"{js_api}.DIRECT.GET.{HALTS_STREAM}"
    try:
        found = await directget.batch(nc, subject, body.encode(), READ_TIMEOUT)
    except directget.DirectGetError as exc:
        why = f"status {exc.status}" if exc.status else "no answer in time"
        raise HaltsUnreadableError(f"halt keys unreadable: {why}") from None
    stored: dict[str, Stored] = {}
    for msg in found:
        headers = msg.headers or {}
        seq = int(headers.get("Nats-Sequence", "0"))
        stored[headers.get("Nats-Subject", "")] = Stored(seq, halt_value(msg))
    return in_force(stored)


def in_force(stored: dict[str, Stored]) -> list[HaltRow]:
    """The halts in force among every halt key's last message."""
    halts = [s.halt for s in stored.values() if s.halt is not None]
    rows = []
    for account in sorted({h.account for h in halts}, key=lambda a: (a != EVERY_ACCOUNT, a)):
        if account == EVERY_ACCOUNT:
            found = stored.get(global_halt_subject())
            if found is not None and found.halt is not None and found.halt.halted:
                rows.append(_row(found.halt))
            continue
        ops = stored.get(account_halt_subject(account))
        trip = stored.get(breaker_subject(account))
        if ops is not None and ops.halt is not None and ops.halt.halted:
            rows.append(_row(ops.halt))
        elif trip is not None and trip.halt is not None and active_halt(stored, account):
            rows.append(_row(trip.halt))
    return rows


def _row(halt: Halt) -> HaltRow:
    return HaltRow(account=halt.account, reason=halt.reason, by=halt.by, since=halt.at)
