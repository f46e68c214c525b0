"""`alertbridge status` and `alertbridge alerts`: looking inside without glue code."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click
import msgspec

from ops.tools.cli_support import emit_table, with_nc
from ops.tools.cli_views import alerts_ls, alerts_show, projector_lag_line
from ops.tools.status import Status, status


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n //= 1024
    return f"{n} TiB"


def _show(found: Status) -> None:
    emit_table(
        ("stream", "messages", "bytes", "first", "last"),
        [(s.name, str(s.messages), _size(s.bytes), _ago(s.first), _ago(s.last))
         for s in found.streams],
        empty="no streams: run `alertbridge provision` or start a worker",
    )  # fmt: skip
    click.echo()
    emit_table(
        ("consumer", "pending", "ack pending", "redelivered", "waiting", "last active"),
        [(f"{c.stream}/{c.name}", str(c.pending), str(c.ack_pending), str(c.redelivered),
          str(c.waiting), _ago(c.last_active)) for c in found.consumers],
        empty="no consumers",
    )  # fmt: skip
    click.echo(f"\nDLQ depth: {found.dlq_depth}")
    click.echo(projector_lag_line())
    if found.missing:
        click.echo(f"missing streams: {', '.join(found.missing)}", err=True)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
@click.option("--watch", "every", type=float, default=None, help="refresh every N seconds")
def status_command(as_json: bool, every: float | None) -> None:
    """Streams, consumers (queue depth, redeliveries, last activity) and DLQ depth."""
    while True:
        found = with_nc(status)
        if as_json:
            click.echo(msgspec.json.encode(found).decode())
        else:
            if every:
                click.clear()
            _show(found)
        if not every:
            return
        time.sleep(every)


@click.group("alerts")
def alerts_group() -> None:
    """Alerts: list them, or one alert's story (from the projections)."""


alerts_group.add_command(alerts_ls)
alerts_group.add_command(alerts_show)
