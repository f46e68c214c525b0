"""`alertbridge orders`, `alerts ls|show`, `positions`, `projections rebuild`: the read models.

Every one of them reads the projector's SQLite file (ops.platform.projections), opened
read-only: a query on an index, however long the history, and no stream is scanned. The
views are as fresh as the projector (`alertbridge status` shows its lag).
"""

from __future__ import annotations

import os
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from ops.platform import projections as views
from ops.tools.cli_support import emit_json, emit_table
from ops.tools.paths import var_dir

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Iterable

T = TypeVar("T")
EXIT_FAILED = 1
_RELATIVE = re.compile(r"\A(\d+(?:\.\d+)?)([smhd])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


def projections_path() -> Path:
    """`ALERTBRIDGE_PROJECTIONS_DB`, else the local stack's file under var/."""
    found = os.environ.get("ALERTBRIDGE_PROJECTIONS_DB", "").strip()
    return Path(found) if found else var_dir() / "projections.db"


def read(query: Callable[[sqlite3.Connection], T]) -> T:
    """Run `query` on the projections, opened read-only."""
    try:
        db = views.open_readonly(projections_path())
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        return query(db)
    except views.BadCursorError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.close()


def projector_lag_line() -> str:
    """`alertbridge status`'s line about the views: messages not folded in yet, per stream
    (the streams' last sequences as the projector last read them)."""
    try:
        db = views.open_readonly(projections_path())
    except FileNotFoundError:
        return "projector lag: unknown (no projections file here)"
    try:
        rows = views.lag(db)
    finally:
        db.close()
    checked = [r.checked for r in rows if r.checked is not None]
    when = f" (read {min(checked).strftime('%H:%M:%S')} UTC)" if checked else ""
    return "projector lag: " + ", ".join(f"{r.stream} {r.lag}" for r in rows) + when


class Moment(click.ParamType[datetime]):
    """An ISO 8601 time (UTC unless it says), or an age: `30m`, `2h`, `7d`."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if m := _RELATIVE.match(text):
            return datetime.now(UTC) - timedelta(seconds=float(m[1]) * _UNITS[m[2]])
        try:
            found = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r}: not a time (2026-01-31T09:30, 2026-01-31) nor an age (30m, 2h)")
        return found if found.tzinfo else found.replace(tzinfo=UTC)


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option("--account", default=None, help="only this account"),
            click.option("--symbol", default=None, help="only this symbol"),
            click.option("--since", type=Moment(), default=None, help="from (time or age: 2h)"),
            click.option(
                "--limit", type=click.IntRange(1, views.MAX_LIMIT), default=50, show_default=True
            ),
            click.option("--cursor", default=None, help="the page after this (from --json)"),
            click.option("--json", "as_json", is_flag=True, help="one JSON object per line"),
        )
    ):
        command = option(command)
    return command


def _stamp(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _num(value: float | None) -> str:
    # repr: the shortest text that is the float sent (`:g` rounds 21034.25 to 21034.2)
    return "" if value is None else repr(float(value)).removesuffix(".0")


def _emit_page(
    page: views.Page[Any],
    as_json: bool,
    headers: tuple[str, ...],
    rows: Iterable[tuple[str, ...]],
    empty: str,
) -> None:
    """A page as JSON lines or as a table, then where the next page starts, if any."""
    if as_json:
        emit_json(page.items)
    else:
        emit_table(headers, list(rows), empty=empty)
    if page.next_cursor is None:
        return
    if as_json:
        click.echo(msgspec.json.encode({"next_cursor": page.next_cursor}).decode())
    else:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@click.command("orders")
@_common
@click.option("--alert", "alert_id", default=None, help="only this alert's order")
def orders_command(
    account: str | None, symbol: str | None, since: datetime | None, limit: int,
    cursor: str | None, as_json: bool, alert_id: str | None,
) -> None:  # fmt: skip
    """Orders the broker took, newest first (from the projections)."""
    page = read(lambda db: views.list_orders(
        db, account=account, symbol=symbol, alert_id=alert_id, since=since, limit=limit,
        cursor=cursor,
    ))  # fmt: skip
    _emit_page(
        page, as_json,
        ("at", "alert id", "account", "symbol", "side", "qty", "fill", "status", "order id"),
        ((_stamp(o.at), o.alert_id, o.account, o.symbol, o.side, _num(o.quantity),
          _num(o.fill_price), o.status, o.client_order_id) for o in page.items),
        empty="no orders",
    )  # fmt: skip


@click.command("ls")
@_common
@click.option("--status", default=None, help="executed, rejected, expired, dead_lettered, ...")
def alerts_ls(
    account: str | None, symbol: str | None, since: datetime | None, limit: int,
    cursor: str | None, as_json: bool, status: str | None,
) -> None:  # fmt: skip
    """Alerts, newest first, with where each got to."""
    page = read(lambda db: views.list_alerts(
        db, account=account, symbol=symbol, status=status, since=since, limit=limit,
        cursor=cursor,
    ))  # fmt: skip
    _emit_page(
        page, as_json,
        ("received", "alert id", "account", "symbol", "side", "qty", "status", "tries",
         "last error"),
        ((_stamp(a.received), a.alert_id, a.account, a.symbol, a.side or "", _num(a.quantity),
          a.status, str(a.attempts), (a.last_error or "")[:60]) for a in page.items),
        empty="no alerts",
    )  # fmt: skip


@click.command("show")
@click.argument("alert_id")
@click.option("--account", default="default", show_default=True,
              help="the alert's account: an id is unique only within its account")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
def alerts_show(alert_id: str, account: str, as_json: bool) -> None:
    """The alert, its events in order (attempts, outcome, replays) and its trace id."""
    found = read(lambda db: views.get_alert(db, account, alert_id))
    if found is None:
        click.echo(f"no alert {alert_id!r} in account {account!r} (yet)", err=True)
        sys.exit(EXIT_FAILED)
    if as_json:
        emit_json([found])
        return
    a = found.alert
    qty = _num(a.quantity) or "default"
    click.echo(f"alert    {a.alert_id} (account {a.account})")
    click.echo(f"order    {a.side} {qty} {a.symbol} ({a.order_type or '-'})")
    click.echo(f"received {a.received.isoformat()}")
    click.echo(f"trace    {a.trace_id or '-'}")
    click.echo(f"status   {a.status} after {a.attempts} attempt(s)")
    if a.last_error:
        click.echo(f"error    {a.last_error}")
    for entry in found.timeline:
        detail = {k: v for k, v in msgspec.structs.asdict(entry.event).items()
                  if k not in ("alert_id", "account", "symbol", "at")}  # fmt: skip
        click.echo(
            f"  {entry.at.isoformat()}  {entry.kind:<15} {msgspec.json.encode(detail).decode()}"
        )


@click.command("positions")
@click.option("--account", default=None, help="only this account")
@click.option("--symbol", default=None, help="only this symbol")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def positions_command(account: str | None, symbol: str | None, as_json: bool) -> None:
    """Net positions and realized P&L per (account, symbol), from the recorded fills."""
    rows = read(lambda db: views.list_positions(db, account=account, symbol=symbol))
    if as_json:
        emit_json(rows)
        return
    emit_table(
        ("account", "symbol", "qty", "avg price", "realized P&L", "fills", "updated"),
        [(p.account, p.symbol, _num(p.quantity), f"{p.avg_price:.4f}", f"{p.realized_pnl:.2f}",
          str(p.fills) + (f" ({p.unpriced} unpriced)" if p.unpriced else ""), _stamp(p.updated))
         for p in rows],
        empty="no positions",
    )  # fmt: skip


@click.group("projections")
def projections_group() -> None:
    """The read models the projector keeps (ALERTBRIDGE_PROJECTIONS_DB)."""


@projections_group.command("rebuild")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds to wait")
def rebuild(timeout: float) -> None:
    """Have the projector fold the streams in again from the start into a new file and
    swap it in (readers are never interrupted). Waits until it is done."""
    path = projections_path()
    request = path.with_name(path.name + ".rebuild")
    failed = request.with_name(request.name + ".failed")
    failed.unlink(missing_ok=True)
    request.parent.mkdir(parents=True, exist_ok=True)
    request.touch()
    click.echo(f"asked the projector to rebuild {path}", err=True)
    deadline = time.monotonic() + timeout
    while request.exists():
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"no rebuild within {timeout:g}s: is the projector running? "
                f"({request} stays: it rebuilds when it starts)"
            )
        time.sleep(0.2)
    if failed.exists():
        raise click.ClickException(f"rebuild failed: {failed.read_text(encoding='utf-8').strip()}")
    applied = read(views.applied)
    click.echo("rebuilt: " + ", ".join(f"{s} up to {seq}" for s, seq in applied.items()))
