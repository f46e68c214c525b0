"""`alertbridge notify test`: one message to each configured notification target."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING

import click

from ops.platform.settings import SettingsError

if TYPE_CHECKING:
    from ops.platform.notify_settings import Target

EXIT_FAILED = 1
EXIT_CONFIG = 2
TEST_TITLE = "test"
TEST_BODY = "alertbridge can reach you here: this is a test sent by `alertbridge notify test`."


@click.group("notify")
def notify_group() -> None:
    """Notifications ([notify] and notify_urls_env in the accounts file)."""


@notify_group.command("test")
def notify_test() -> None:
    """Send one test message to each target; say which took it (by variable, never URL)."""
    from ops.platform.notify_settings import read_notify  # apprise: a lazy import

    try:
        targets = read_notify(os.environ).all()
    except SettingsError as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    if not targets:
        click.echo("no notification targets: set [notify] urls_env in the accounts file", err=True)
        sys.exit(EXIT_FAILED)

    async def send_all() -> list[bool]:
        return list(await asyncio.gather(*(_try(t) for t in targets)))

    results = asyncio.run(send_all())
    for target, ok in zip(targets, results, strict=True):
        click.echo(f"{target.name}: {'sent' if ok else 'FAILED'}")
    if not all(results):
        sys.exit(EXIT_FAILED)


async def _try(target: Target) -> bool:
    from ops.platform.notify_settings import send

    try:
        return await send(target, TEST_TITLE, TEST_BODY)
    except Exception:  # noqa: BLE001 - a target that fails in any way: reported as FAILED
        return False
