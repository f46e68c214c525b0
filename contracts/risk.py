"""The kill switch and the risk ledger as stored: two KV buckets, their keys and values.

A KV bucket is a stream `KV_<bucket>` on `$KV.<bucket>.<key>`, one message kept per key;
the processes read and write those subjects directly (a direct get, a publish), so a
role needs only the subjects its account imports (deploy/nats-server.conf).

`HALTS`: who stopped trading, and why.
    global                 the operators' halt of every account      (ops only)
    account.<account>      the operators' halt of one account        (ops only)
    breaker.<account>      the circuit breaker's trip                (ops and workers)
A breaker message always means "tripped", whatever it holds: a worker can trip a
breaker but never clear one. It is cleared by a newer `account.<account>` message, which
`alertbridge resume --account` always writes (see `active_halt`).

`LIMITS`: `ledger.<account>`, one `Ledger` per account, changed only by compare-and-set.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

import msgspec

HALTS_BUCKET: Final = "HALTS"
LIMITS_BUCKET: Final = "LIMITS"
HALTS_STREAM: Final = f"KV_{HALTS_BUCKET}"
LIMITS_STREAM: Final = f"KV_{LIMITS_BUCKET}"
EVERY_ACCOUNT: Final = "*"  # the account of a global halt's events

# Headers of a KV message: a delete or purge marker, and a compare-and-set write.
KV_OPERATION: Final = "KV-Operation"
EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE: Final = 10071  # the server's error code for a lost compare-and-set


def key_token(name: str) -> str:
    """Any account name as one KV key token: `[A-Za-z0-9_-]` kept, every other byte `=XX`."""
    return "".join(
        c
        if c.isascii() and (c.isalnum() or c in "-_")
        else "".join(f"={b:02X}" for b in c.encode())
        for c in name
    )


def kv_subject(bucket: str, key: str) -> str:
    """The subject a bucket stores `key` on."""
    return f"$KV.{bucket}.{key}"


def global_halt_subject() -> str:
    """Where the operators' halt of every account is kept."""
    return kv_subject(HALTS_BUCKET, "global")


def account_halt_subject(account: str) -> str:
    """Where the operators' halt (or resume) of one account is kept."""
    return kv_subject(HALTS_BUCKET, f"account.{key_token(account)}")


def breaker_subject(account: str) -> str:
    """Where the circuit breaker's trip of one account is kept."""
    return kv_subject(HALTS_BUCKET, f"breaker.{key_token(account)}")


def ledger_subject(account: str) -> str:
    """Where one account's risk ledger is kept."""
    return kv_subject(LIMITS_BUCKET, f"ledger.{key_token(account)}")


class Halt(msgspec.Struct, frozen=True, kw_only=True):
    """A halt key's value: halted (and why, since when, by whom), or resumed."""

    account: str  # EVERY_ACCOUNT on the global key
    halted: bool
    reason: str = ""
    at: datetime
    by: Literal["ops", "breaker"] = "ops"


halt_encoder: Final = msgspec.json.Encoder()
halt_decoder: Final = msgspec.json.Decoder(Halt)


class Stored(msgspec.Struct, frozen=True):
    """A halt key's last message: its stream sequence and value (None: deleted, purged or
    not a `Halt`)."""

    seq: int
    halt: Halt | None


def active_halt(halts: dict[str, Stored], account: str) -> str | None:
    """Why `account` may not trade now (None: it may), from every halt key's last message.

    The operators' halts first; then a breaker trip, unless the operators resumed the
    account after it (a higher sequence on `account.<account>`).
    """
    for subject in (global_halt_subject(), account_halt_subject(account)):
        found = halts.get(subject)
        if found is not None and found.halt is not None and found.halt.halted:
            return found.halt.reason
    trip, resumed = halts.get(breaker_subject(account)), halts.get(account_halt_subject(account))
    if trip is None or (resumed is not None and resumed.seq > trip.seq):
        return None
    return trip.halt.reason if trip.halt is not None and trip.halt.reason else "circuit breaker"


class Slot(msgspec.Struct, frozen=True, kw_only=True):
    """One admitted order in a ledger: in flight until the broker has it (`done`)."""

    symbol: str
    at: float  # when it was admitted, in epoch seconds
    day: str  # the trading day it was admitted in (ISO date)
    notional: float = 0.0
    delta: float = 0.0  # the signed position change it was admitted for
    done: bool = False


class Ledger(msgspec.Struct, frozen=True, kw_only=True):
    """One account's risk state, shared by every worker (`worker.ledger` keeps it).

    `slots` by alert key (the alert's account, id and replay round): a redelivery finds
    its own slot and is never counted twice. `streak`: the alert keys of the broker
    rejections in a row since the last execution or trip; `tripped`: the streak that
    last tripped the circuit breaker (a redelivery of one of its alerts trips it again,
    idempotently, in case the first trip was cut short).
    """

    slots: dict[str, Slot] = msgspec.field(default_factory=dict)
    positions: dict[str, float] = msgspec.field(default_factory=dict)
    streak: tuple[str, ...] = ()
    tripped: tuple[str, ...] = ()


ledger_encoder: Final = msgspec.json.Encoder()
ledger_decoder: Final = msgspec.json.Decoder(Ledger)
