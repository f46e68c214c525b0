"""`alertbridge dlq`: see, replay and purge dead-lettered alerts."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click
import msgspec

from ops.tools.cli_support import emit_json, emit_table, with_js

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from contracts.messages import Replayed
    from ops.tools.dlq import DeadLetter

EXIT_FAILED = 1


@click.group("dlq")
def dlq_group() -> None:
    """Dead-lettered alerts: why they died, and replaying them."""


@dlq_group.command("ls")
@click.option("--reason", default=None, help="only reasons starting with this (e.g. expired)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def ls(reason: str | None, as_json: bool) -> None:
    """List DLQ entries, oldest first."""

    from ops.tools import dlq  # nats-py: imported by the commands that use it

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

    from ops.tools import dlq  # nats-py: imported by the commands that use it

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
@click.option("--dry-run", is_flag=True, help="say what would be replayed; replay nothing")
@click.option("--json", "as_json", is_flag=True)
def replay(
    dlq_ids: tuple[int, ...], everything: bool, reason: str | None, dry_run: bool, as_json: bool
) -> None:
    """Re-queue alerts; their broker idempotency key is kept, so nothing is doubled."""

    from ops.tools import dlq  # nats-py: imported by the commands that use it

    _check_selection(dlq_ids, everything, reason)
    if dry_run:
        _dry_run(dlq_ids, everything, reason, as_json)
        return

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


def _check_selection(dlq_ids: tuple[int, ...], everything: bool, reason: str | None) -> None:
    if bool(dlq_ids) == everything:
        raise click.UsageError("give DLQ ids, or --all")
    if reason and not everything:
        raise click.UsageError("--reason goes with --all")


def _dry_run(dlq_ids: tuple[int, ...], everything: bool, reason: str | None, as_json: bool) -> None:
    """The entries a replay would re-queue, read and left as they are."""

    from ops.tools import dlq  # nats-py: imported by the commands that use it

    async def work(js: JetStreamContext) -> tuple[list[DeadLetter], list[str]]:
        if everything:
            return await dlq.entries(js, reason), []
        found, failed = [], []
        for dlq_id in dlq_ids:
            try:
                found.append(await dlq.entry(js, dlq_id))
            except dlq.DlqError as exc:
                failed.append(str(exc))
        return found, failed

    found, failed = with_js(work)
    if as_json:
        emit_json(found)
    else:
        for e in found:
            click.echo(f"would replay DLQ {e.dlq_seq}: alert {e.alert_id} ({e.reason})")
        click.echo(f"dry run: {len(found)} entr{_ies(len(found))} would be replayed", err=True)
    for message in failed:
        click.echo(message, err=True)
    if failed:
        sys.exit(EXIT_FAILED)


class Purged(msgspec.Struct, frozen=True, omit_defaults=True):
    """What `dlq purge --json` says of one id."""

    dlq_seq: int
    purged: bool
    error: str | None = None


@dlq_group.command()
@click.argument("dlq_ids", type=int, nargs=-1, required=True)
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per id")
def purge(dlq_ids: tuple[int, ...], yes: bool, as_json: bool) -> None:
    """Remove entries for good (asks first; --yes does not)."""

    from ops.tools import dlq  # nats-py: imported by the commands that use it

    if not yes:
        listed = ", ".join(map(str, dlq_ids))
        click.confirm(
            f"purge DLQ entr{_ies(len(dlq_ids))} {listed} for good?", abort=True, err=True
        )

    async def work(js: JetStreamContext) -> list[Purged]:
        done = []
        for dlq_id in dlq_ids:
            try:
                await dlq.purge(js, dlq_id)
                done.append(Purged(dlq_id, purged=True))
            except dlq.DlqError as exc:
                done.append(Purged(dlq_id, purged=False, error=str(exc)))
        return done

    done = with_js(work)
    failed = [p.error for p in done if p.error is not None]
    if as_json:
        emit_json(done)
    else:
        for message in failed:
            click.echo(message, err=True)
        purged = len(done) - len(failed)
        click.echo(f"purged {purged} entr{_ies(purged if failed else len(dlq_ids))}")
    if failed:
        sys.exit(EXIT_FAILED)


def _ies(n: int) -> str:
    return "y" if n == 1 else "ies"
