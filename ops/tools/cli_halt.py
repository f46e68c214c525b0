"""`alertbridge halt`, `resume` and `halts`: the kill switch (contracts/risk.py, docs/risk.md).

A halt is a value on the HALTS bucket, written only by the operators (the ops role), and
a `Halted` event. Every worker reads the halt keys before each broker call, so once
`halt` has returned no alert of that account is sent to a broker any more (one already
in a broker call finishes). Halted alerts end `rejected` in the DLQ, from where
`alertbridge dlq replay` sends them again, deliberately, once trading is resumed.
Writing a halt and finding those in force is ops.platform.halting, shared with the console.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from contracts.risk import EVERY_ACCOUNT, HALTS_BUCKET, HALTS_STREAM, Halt, Stored, kv_subject
from ops.platform.halting import HaltRow, halt_value, in_force, record
from ops.tools.cli_support import emit_json, emit_table, with_js

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = ["halt_command", "halted_now", "halts_command", "record", "resume_command"]


async def halted_now(js: JetStreamContext) -> list[HaltRow]:
    """Every halt in force, as the workers see it: the global halt first, then by account."""
    from ops.tools.streams import read_all  # nats-py: a lazy import

    stored: dict[str, Stored] = {}
    for msg in await read_all(js, HALTS_STREAM, kv_subject(HALTS_BUCKET, ">")):
        stored[msg.subject] = Stored(msg.metadata.sequence.stream, halt_value(msg))
    return in_force(stored)


@click.command("halt")
@click.option("--account", default=None, help="only this account (default: every account)")
@click.option("--reason", required=True, help="why: in every rejected alert's reason")
def halt_command(account: str | None, reason: str) -> None:
    """Stop trading now: alerts are still accepted and stored, but none is executed."""
    if not reason.strip():
        raise click.UsageError("--reason must say why")
    halt = Halt(account=account or EVERY_ACCOUNT, halted=True, reason=reason.strip(),
                at=datetime.now(UTC))  # fmt: skip
    seq = with_js(lambda js: record(js, halt))
    click.echo(f"halted {'every account' if account is None else repr(account)} (HALTS seq {seq})")


@click.command("resume")
@click.option("--account", default=None, help="this account (default: the global halt)")
def resume_command(account: str | None) -> None:
    """Resume trading: the global halt, or one account's halt and circuit breaker.

    Alerts rejected while halted stay in the DLQ: replay them with `alertbridge dlq replay`.
    """
    halt = Halt(account=account or EVERY_ACCOUNT, halted=False, at=datetime.now(UTC))

    async def resume(js: JetStreamContext) -> list[HaltRow]:
        await record(js, halt)
        return await halted_now(js)

    left = with_js(resume)
    click.echo(f"resumed {'every account' if account is None else repr(account)}")
    for row in left:
        who = "every account" if row.account == EVERY_ACCOUNT else repr(row.account)
        click.echo(f"still halted: {who} ({row.by}): {row.reason}", err=True)


@click.command("halts")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def halts_command(as_json: bool) -> None:
    """List the halts in force (`*`: every account)."""
    rows = with_js(halted_now)
    if as_json:
        emit_json(rows)
        return
    emit_table(
        ("account", "by", "since", "reason"),
        [(r.account, r.by, r.since.strftime("%Y-%m-%d %H:%M:%S"), r.reason) for r in rows],
        empty="no halts: every account trades",
    )
