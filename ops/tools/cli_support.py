"""What every `alertbridge` subcommand shares: a NATS connection, tables, JSON lines.

The CLI starts lazily: a module of `ops.tools.cli*` imports nats-py, httpx, apprise and
the like inside the commands that use them, never at its top, so that `--help` and the
commands that only read the projections (`orders`, `alerts ls`, ...) start in a fraction
of a second (tests/test_cli_start.py keeps it so).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, TypeVar

import click
import msgspec

from ops.platform.settings import Common, SettingsError, load
from ops.tools.paths import var_dir, with_local_nats_identity

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


def settings_from_env() -> Common:
    """The shared settings; a bad variable is a usage error (exit 2).

    Without NATS credentials of its own, the CLI is the local stack's `ops` user.
    """
    try:
        return load(Common, with_local_nats_identity(os.environ, var_dir()))
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def with_js(work: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    """Run `work` with a JetStream context on the configured server."""
    return with_nc(lambda nc: work(nc.jetstream()))


def with_nc(work: Callable[[Client], Awaitable[T]]) -> T:
    """Run `work` with a connection to the configured server."""
    from ops.platform.natsconn import NatsUnreachableError, connect  # nats-py: a lazy import

    settings = settings_from_env()

    async def run_it() -> T:
        try:
            nc = await connect(settings, name="alertbridge-cli", fail_fast=True)
        except (NatsUnreachableError, SettingsError) as exc:  # or refused credentials
            raise click.ClickException(str(exc)) from None
        try:
            return await work(nc)
        finally:
            await nc.close()

    return asyncio.run(run_it())


def emit_json(rows: Sequence[msgspec.Struct]) -> None:
    """One JSON object per line, for scripts."""
    for row in rows:
        click.echo(_encoder.encode(row).decode())


def emit_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str) -> None:
    """Aligned columns for people; `empty` goes to stderr when there are no rows."""
    if not rows:
        click.echo(empty, err=True)
        return
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
