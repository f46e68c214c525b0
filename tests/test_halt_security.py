"""The kill switch's doors on the real deploy/nats-server.conf: the worker reads every
halt key, keeps its ledgers and trips a breaker, and can do nothing else there (above
all, never resume); the ingress cannot touch either bucket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.risk import (
    EVERY_ACCOUNT,
    HALTS_STREAM,
    LIMITS_STREAM,
    Halt,
    Ledger,
    account_halt_subject,
    breaker_subject,
    global_halt_subject,
    halt_encoder,
    ledger_encoder,
    ledger_subject,
)
from ops.platform.nats_compat import api_prefix
from ops.platform.settings import DEFAULT_JS_API, ROLE_JS_API
from ops.tools.cli_halt import halted_now, record
from tests.secured import DENIED, DENIED_WITHIN, Secured
from worker import ledger
from worker.halts import HaltView

NOW = datetime(2026, 12, 7, 15, tzinfo=UTC)


def halt(account: str, halted: bool = True, reason: str = "test") -> bytes:
    return halt_encoder.encode(Halt(account=account, halted=halted, reason=reason, at=NOW))


async def test_the_worker_reads_halts_keeps_ledgers_and_trips_breakers(
    secured: Secured, as_worker: Client, as_ops: JetStreamContext
) -> None:
    before = len(secured.violations("worker"))
    js = secured.js("worker", as_worker)
    view = HaltView(as_worker, api_prefix(js))
    assert await view.reason("acme") is None  # an empty bucket
    await record(as_ops, Halt(account="acme", halted=True, reason="audit", at=NOW))
    assert await view.reason("acme") == "audit"
    assert await view.reason("other") is None

    await js.publish(breaker_subject("other"), halt("other", reason="3 consecutive rejections"))
    assert await view.reason("other") == "3 consecutive rejections"
    books = ledger.Ledgers(js)
    step = ledger.rejected(Ledger(), "k", 5)
    await books.change("other", lambda book: (step[0], None))
    assert (await books.read("other"))[0].streak == ("k",)
    assert secured.violations("worker")[before:] == []


@pytest.mark.parametrize("prefix", [ROLE_JS_API, DEFAULT_JS_API])
@pytest.mark.parametrize("key", ["global", "account"])
async def test_the_worker_cannot_resume_nor_halt_as_the_operators(
    secured: Secured, as_worker: Client, as_ops: JetStreamContext, key: str, prefix: str
) -> None:
    account = EVERY_ACCOUNT if key == "global" else "acme"
    await record(as_ops, Halt(account=account, halted=True, reason="ops said so", at=NOW))
    subject = global_halt_subject() if key == "global" else account_halt_subject("acme")
    js = as_worker.jetstream(prefix=prefix, timeout=0.5)
    for value in (halt(account, halted=False), halt(account, reason="forged")):
        with pytest.raises(DENIED):
            await asyncio.wait_for(js.publish(subject, value), 1)
    rows = await halted_now(as_ops)
    assert [(r.account, r.reason) for r in rows] == [(account, "ops said so")]


async def test_a_worker_writing_a_breaker_key_can_only_halt(
    secured: Secured, as_worker: Client, as_ops: JetStreamContext
) -> None:
    """Whatever a worker writes there, even `halted: false` or a delete marker, trips."""
    js = secured.js("worker", as_worker)
    view = HaltView(as_worker, api_prefix(js))
    await record(as_ops, Halt(account="acme", halted=False, at=NOW))  # resumed by ops
    await js.publish(breaker_subject("acme"), halt("acme", halted=False, reason=""))
    assert await view.reason("acme") == "circuit breaker"
    await js.publish(breaker_subject("acme"), b"", headers={"KV-Operation": "DEL"})
    assert await view.reason("acme") == "circuit breaker"
    await record(as_ops, Halt(account="acme", halted=False, at=NOW))  # only ops clears it
    assert await view.reason("acme") is None


def _worker_attempts() -> dict[str, Callable[[JetStreamContext], Awaitable[object]]]:
    return {
        "purge the halts": lambda js: js.purge_stream(HALTS_STREAM),
        "delete a halt": lambda js: js.delete_msg(HALTS_STREAM, 1),
        "read a halt by sequence": lambda js: js.get_msg(HALTS_STREAM, seq=1),
        "delete the ledgers": lambda js: js.delete_stream(LIMITS_STREAM),
        "watch the halts": lambda js: js.subscribe(
            global_halt_subject(), stream=HALTS_STREAM, ordered_consumer=True
        ),
    }


@pytest.mark.parametrize("attempt", list(_worker_attempts()))
async def test_the_worker_cannot_purge_delete_or_watch_the_buckets(
    secured: Secured, as_worker: Client, as_ops: JetStreamContext, attempt: str
) -> None:
    await record(as_ops, Halt(account="acme", halted=True, reason="kept", at=NOW))
    with pytest.raises(DENIED):
        js = secured.js("worker", as_worker, timeout=0.5)  # type: ignore[arg-type]
        await asyncio.wait_for(_worker_attempts()[attempt](js), 1)
    assert [r.reason for r in await halted_now(as_ops)] == ["kept"]


def _ingress_attempts() -> dict[str, Callable[[JetStreamContext], Awaitable[object]]]:
    return {
        "read the halts": lambda js: js.get_msg(
            HALTS_STREAM, subject=global_halt_subject(), direct=True
        ),
        "read a ledger": lambda js: js.get_msg(
            LIMITS_STREAM, subject=ledger_subject("acme"), direct=True
        ),
        "resume": lambda js: js.publish(global_halt_subject(), halt(EVERY_ACCOUNT, False)),
        "trip a breaker": lambda js: js.publish(breaker_subject("acme"), halt("acme")),
        "write a ledger": lambda js: js.publish(
            ledger_subject("acme"), ledger_encoder.encode(Ledger())
        ),
    }


@pytest.mark.parametrize("prefix", [ROLE_JS_API, DEFAULT_JS_API])
@pytest.mark.parametrize("attempt", list(_ingress_attempts()))
async def test_the_ingress_cannot_read_or_write_the_buckets(
    secured: Secured, as_ingress: Client, as_ops: JetStreamContext, attempt: str, prefix: str
) -> None:
    await record(as_ops, Halt(account=EVERY_ACCOUNT, halted=True, reason="kept", at=NOW))
    with pytest.raises(DENIED):
        await asyncio.wait_for(_ingress_attempts()[attempt](as_ingress.jetstream(
            prefix=prefix, timeout=0.5)), 1)  # fmt: skip
    assert [r.reason for r in await halted_now(as_ops)] == ["kept"]
    assert (await as_ops.stream_info(LIMITS_STREAM)).state.messages == 0


@pytest.mark.parametrize("subject", ["$KV.HALTS.>", "$KV.LIMITS.>"])
async def test_neither_role_can_listen_to_the_buckets(
    secured: Secured, as_ingress: Client, as_worker: Client, subject: str
) -> None:
    for user, client in (("ingress", as_ingress), ("worker", as_worker)):
        sub = await client.subscribe(subject)
        await client.flush()
        await secured.refused(user, "Subscription", subject)
        with pytest.raises(TimeoutError):
            await sub.next_msg(timeout=DENIED_WITHIN)
