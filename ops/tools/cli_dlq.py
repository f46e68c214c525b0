"""`alertbridge dlq`: see, replay and purge dead-lettered alerts."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ops.tools import dlq
from ops.tools.cli_support import emit_json, emit_table, with_js

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from contracts.messages import Replayed

EXIT_FAILED = 1


@click.group("dlq")
def dlq_group() -> None:
    """Dead-lettered alerts: why they died, and replaying them."""


@dlq_group.command("ls")
@click.option("--reason", default=None, help="only reasons starting with this (e.g. expired)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def ls(reason: str | None, as_json: bool) -> None:
    """List DLQ entries, oldest first."""
    found = with_js(lambda js: dlq.entries(js, reason))
    if as_json:
        emit_json(found)
        return
    emit_table(
        ("id", "dead at", "alert id", "account", "symbol", "reason", "tries", "last error"),
        [
            (str(e.dlq_seq), e.at[:19], e.alert_id, e.account, e.symbol, e.reason[:40],
             str(e.deliveries), (e.last_error or "")[:60])
            for e in found
        ],
        empty="the DLQ is empty",
    )  # fmt: skip


@dlq_group.command()
@click.argument("dlq_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def show(dlq_id: int, as_json: bool) -> None:
    """One entry in full, the original alert included."""
    try:
        found = with_js(lambda js: dlq.entry(js, dlq_id))
    except dlq.DlqError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json([found])
        return
    for name in ("dlq_seq", "alert_id", "account", "symbol", "reason", "deliveries",
                 "last_error", "stream_seq", "subject", "at"):  # fmt: skip
        click.echo(f"{name:>11}: {getattr(found, name)}")
    click.echo(f"{'alert':>11}: {found.alert}")


@dlq_group.command()
@click.argument("dlq_ids", type=int, nargs=-1)
@click.option("--all", "everything", is_flag=True, help="replay every entry (see --reason)")
@click.option("--reason", default=None, help="with --all: only reasons starting with this")
@click.option("--json", "as_json", is_flag=True)
def replay(dlq_ids: tuple[int, ...], everything: bool, reason: str | None, as_json: bool) -> None:
    """Re-queue alerts; their broker idempotency key is kept, so nothing is doubled."""
    if bool(dlq_ids) == everything:
        raise click.UsageError("give DLQ ids, or --all")
    if reason and not everything:
        raise click.UsageError("--reason goes with --all")

    async def work(js: JetStreamContext) -> tuple[list[Replayed], list[str]]:
        ids = [e.dlq_seq for e in await dlq.entries(js, reason)] if everything else dlq_ids
        done, failed = [], []
        for dlq_id in ids:
            try:
                done.append(await dlq.replay(js, dlq_id))
            except dlq.DlqError as exc:
                failed.append(str(exc))
        return done, failed

    done, failed = with_js(work)
    if as_json:
        emit_json(done)
    else:
        for event in done:
            click.echo(
                f"replayed DLQ {event.dlq_seq}: alert {event.alert_id} (round {event.replay})"
            )
    for message in failed:
        click.echo(message, err=True)
    if failed:
        sys.exit(EXIT_FAILED)


@dlq_group.command()
@click.argument("dlq_ids", type=int, nargs=-1, required=True)
def purge(dlq_ids: tuple[int, ...]) -> None:
    """Remove entries for good."""

    async def work(js: JetStreamContext) -> list[str]:
        failed = []
        for dlq_id in dlq_ids:
            try:
                await dlq.purge(js, dlq_id)
            except dlq.DlqError as exc:
                failed.append(str(exc))
        return failed

    failed = with_js(work)
    for message in failed:
        click.echo(message, err=True)
    click.echo(f"purged {len(dlq_ids) - len(failed)} entr{'y' if len(dlq_ids) == 1 else 'ies'}")
    if failed:
        sys.exit(EXIT_FAILED)
