"""The `alertbridge` command: run the local stack, send test alerts, look at orders.

Data goes to stdout (`--json` for scripts), messages to stderr. Exit codes:
0 ok, 1 the operation failed (e.g. the ingress refused the alert), 2 bad usage.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx

from contracts.messages import Executed
from ops.platform.accounts import ingress_accounts, read_accounts, worker_accounts
from ops.platform.settings import SettingsError
from ops.tools.cli_dlq import dlq_group
from ops.tools.cli_inspect import alerts_group, status_command
from ops.tools.cli_support import emit_json, emit_table, settings_from_env, with_js
from ops.tools.events import read_events
from ops.tools.paths import read_secret, secret_file, var_dir, write_nats_context
from ops.tools.stack import Stack, run

EXIT_FAILED = 1


@click.group()
def cli() -> None:
    """alertbridge: TradingView alerts to broker orders over NATS JetStream."""


@cli.command()
@click.option("--workers", default=1, show_default=True, help="worker processes")
@click.option(
    "--ingress",
    "ingresses",
    default=1,
    show_default=True,
    help="ingress processes, sharing the port (SO_REUSEPORT)",
)
@click.option("--port", "http_port", default=8080, show_default=True, help="ingress HTTP port")
@click.option("--nats-port", default=4222, show_default=True)
@click.option("--monitor-port", default=8222, show_default=True, help="nats-server monitoring")
def up(workers: int, ingresses: int, http_port: int, nats_port: int, monitor_port: int) -> None:
    """Run nats-server, provisioning, worker(s) and ingress(es) in the foreground."""
    stack = Stack(
        var=var_dir(), http_port=http_port, nats_port=nats_port, monitor_port=monitor_port,
        workers=workers, ingresses=ingresses,
    )  # fmt: skip
    sys.exit(run(stack))


@cli.command()
def provision() -> None:
    """Create or update the streams and consumers (idempotent)."""
    from ops.platform import provision as prov

    topology = settings_from_env().topology()
    with_js(lambda js: prov.apply(js, topology))
    click.echo("topology applied", err=True)


@cli.command()
@click.option("--url", default="http://127.0.0.1:8080/webhook", show_default=True)
@click.option(
    "--secret-file",
    type=click.Path(path_type=Path),
    default=None,
    help="default: the local stack's generated secret (var/secret)",
)
@click.option(
    "--file",
    "body_file",
    type=click.Path(exists=True, path_type=Path),
    help="send this file's bytes as the body (the secret goes in the URL path)",
)
@click.option("--symbol", default="NASDAQ:AAPL", show_default=True)
@click.option("--side", default="buy", show_default=True)
@click.option("--qty", type=float, default=1.0, show_default=True)
@click.option("--price", type=float, default=None)
@click.option("--id", "alert_id", default=None, help="alert id (default: a hash of the body)")
@click.option("--account", default=None)
def send(
    url: str,
    secret_file: Path | None,
    body_file: Path | None,
    symbol: str,
    side: str,
    qty: float,
    price: float | None,
    alert_id: str | None,
    account: str | None,
) -> None:
    """Post an alert exactly as TradingView would; print the ingress's answer."""
    secret = read_secret(secret_file or _default_secret_file())
    if body_file is not None:
        body = body_file.read_bytes()
        url = f"{url.rstrip('/')}/{secret}"
    else:
        fields: dict[str, Any] = {"secret": secret, "symbol": symbol, "side": side, "qty": qty}
        # Like TradingView's {{timenow}}: two sends a second apart are two alerts.
        fields["timenow"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        optional = {"price": price, "id": alert_id, "account": account}
        fields.update({k: v for k, v in optional.items() if v is not None})
        body = json.dumps(fields).encode()
    try:
        json.loads(body)
        content_type = "application/json"  # TradingView: only when the body is valid JSON
    except ValueError:
        content_type = "text/plain; charset=utf-8"
    try:
        response = httpx.post(url, content=body, headers={"Content-Type": content_type}, timeout=5)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the ingress at {url}: {exc}") from None
    click.echo(f"{response.status_code} {response.text}")
    if response.status_code != 200:
        sys.exit(EXIT_FAILED)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.option("--alert", "alert_id", default=None, help="only this alert's order")
def orders(as_json: bool, alert_id: str | None) -> None:
    """List executed orders (from the EVENTS stream), oldest first."""
    events = with_js(lambda js: read_events(js, "events.executed.>"))
    rows = [e for e in events if isinstance(e, Executed) and alert_id in (None, e.alert_id)]
    if as_json:
        emit_json(rows)
        return
    emit_table(
        ("at", "alert id", "account", "symbol", "side", "qty", "fill", "status", "order id"),
        [
            (e.at.strftime("%Y-%m-%d %H:%M:%S"), e.alert_id, e.account, e.symbol, e.side,
             f"{e.quantity:g}", "" if e.fill_price is None else f"{e.fill_price:g}",
             e.status, e.client_order_id)
            for e in rows
        ],
        empty="no orders yet",
    )  # fmt: skip


@cli.command("nats-context")
@click.option("--url", default="nats://127.0.0.1:4222", show_default=True)
def nats_context(url: str) -> None:
    """Write the `nats` CLI context `alertbridge` (then: nats --context alertbridge ...)."""
    click.echo(f"wrote {write_nats_context(url)}")


@cli.group("config")
def config_group() -> None:
    """The accounts file (ALERTBRIDGE_CONFIG, default ./alertbridge.toml)."""


@config_group.command("check")
def config_check() -> None:
    """Validate the accounts file and the variables it names; start nothing."""
    try:
        found = read_accounts(os.environ)
        senders = ingress_accounts(os.environ)  # what the ingress reads
        worker_accounts(os.environ)  # what the worker reads
    except SettingsError as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(2)
    if found.path is None:
        click.echo("no accounts file: one paper account, `default` (see README: Accounts)")
        return
    click.echo(f"{found.path}: {len(found.accounts)} account(s) OK")
    for name, account in found.accounts.items():
        secrets = len(senders.secrets.get(name, ()))
        click.echo(f"  {name}: {account.broker.kind}, {secrets} own webhook secret(s)")


cli.add_command(dlq_group)
cli.add_command(status_command)
cli.add_command(alerts_group)


def _default_secret_file() -> Path:
    path = secret_file(var_dir())
    if not path.exists():
        raise click.UsageError(f"no {path}: run `just up` once, or pass --secret-file")
    return path


def main() -> None:
    """Entry point of the `alertbridge` script."""
    cli()
