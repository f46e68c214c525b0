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

from ops.platform.accounts import (
    every_problem,
    ingress_accounts,
    read_accounts,
    worker_accounts,
)
from ops.platform.limits import describe_limits
from ops.platform.settings import SettingsError
from ops.tools.cli_dlq import dlq_group
from ops.tools.cli_halt import halt_command, halts_command, resume_command
from ops.tools.cli_inspect import alerts_group, status_command
from ops.tools.cli_notify import notify_group
from ops.tools.cli_support import settings_from_env, with_js
from ops.tools.cli_views import orders_command, positions_command, projections_group
from ops.tools.paths import (
    local_webhook_url,
    read_secret,
    secret_file,
    var_dir,
    write_nats_context,
)
from ops.tools.supervisor import RestartPolicy
from ops.tools.template import template_command

EXIT_FAILED = 1
# `up --ingress`'s default as --help shows it, without importing the stack (and nats-py)
# for --help: ops.tools.stack.MAX_DEFAULT_INGRESSES (tests/test_cli_start.py checks it).
UP_INGRESSES = "one per core, at most 8"


def _default_ingresses() -> int:
    from ops.tools.stack import default_ingresses  # nats-py: imported when `up` runs

    return default_ingresses()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="alertbridge")
def cli() -> None:
    """alertbridge: TradingView alerts to broker orders over NATS JetStream."""


@cli.command()
@click.option("--workers", default=1, show_default=True, help="worker processes")
@click.option(
    "--ingress",
    "ingresses",
    type=click.IntRange(min=1),
    default=_default_ingresses,
    show_default=UP_INGRESSES,
    help="ingress processes, sharing the port (SO_REUSEPORT)",
)
@click.option("--port", "http_port", default=8080, show_default=True, help="ingress HTTP port")
@click.option("--nats-port", default=4222, show_default=True)
@click.option("--monitor-port", default=8222, show_default=True, help="nats-server monitoring")
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    envvar="ALERTBRIDGE_HEALTH_PORT",
    show_envvar=True,
    default=None,
    help="the first worker's /healthz, /readyz, /metrics port, the next worker's is one more "
    "(default: --port + 1; 0: none)",
)
@click.option(
    "--console-port",
    type=click.IntRange(1, 65535),
    envvar="ALERTBRIDGE_CONSOLE_PORT",
    show_envvar=True,
    default=8090,
    show_default=True,
    help="the web console and its API (on 127.0.0.1; its token is var/console.token)",
)
@click.option(
    "--restart-limit",
    type=click.IntRange(min=0),
    envvar="ALERTBRIDGE_RESTART_LIMIT",
    show_envvar=True,
    default=RestartPolicy.limit,
    show_default=True,
    help="restarts of one crashed process allowed within --restart-window; "
    "one crash more stops the stack and exits 1 (0: stop at the first crash)",
)
@click.option(
    "--restart-window",
    type=click.FloatRange(min=0, min_open=True),
    envvar="ALERTBRIDGE_RESTART_WINDOW",
    show_envvar=True,
    default=RestartPolicy.window,
    show_default=True,
    help="seconds",
)
def up(
    workers: int,
    ingresses: int,
    http_port: int,
    nats_port: int,
    monitor_port: int,
    health_port: int | None,
    console_port: int,
    restart_limit: int,
    restart_window: float,
) -> None:
    """Run nats-server, provisioning, worker(s) and ingress(es) in the foreground.

    A process that dies is restarted (after 0.5 s, doubling for each recent crash, at
    most 30 s); Ctrl-C or SIGTERM stops them all in order and exits 0.
    """
    from ops.tools.stack import Stack, run

    stack = Stack(
        var=var_dir(), http_port=http_port, nats_port=nats_port, monitor_port=monitor_port,
        workers=workers, ingresses=ingresses, health_port=health_port, console_port=console_port,
        policy=RestartPolicy(limit=restart_limit, window=restart_window),
    )  # fmt: skip
    sys.exit(run(stack))


@cli.command()
def provision() -> None:
    """Create or update the streams and consumers (idempotent)."""
    from ops.platform import logs
    from ops.platform import provision as prov

    logs.setup("alertbridge-provision")  # what it changed (a partition count, say) shows
    topology = settings_from_env().topology()
    try:
        with_js(lambda js: prov.apply(js, topology))
    except SettingsError as exc:  # e.g. a partition count that cannot change while alerts wait
        raise click.ClickException(str(exc)) from None
    click.echo("topology applied", err=True)


@cli.command()
@click.option(
    "--url",
    envvar="ALERTBRIDGE_WEBHOOK_URL",
    show_envvar=True,
    default=None,
    help="the webhook (default: the local stack's, on the port `up --port` chose)",
)
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
    url: str | None,
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
    import httpx  # a lazy import, as every heavy one here (ops.tools.cli_support)

    url = url or local_webhook_url(var_dir())
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
    from ops.platform.notify_settings import read_notify  # apprise: a lazy import

    if problems := every_problem(os.environ):  # every one, not only the first
        for problem in problems:
            click.echo(f"invalid: {problem}", err=True)
        sys.exit(2)
    try:
        found = read_accounts(os.environ)
        senders = ingress_accounts(os.environ)  # what the ingress reads
        worker_accounts(os.environ)  # what the worker reads
        notify = read_notify(os.environ)  # what the notifier reads
    except SettingsError as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(2)
    if found.path is None:
        click.echo("no accounts file: one paper account, `default` (see README: Accounts)")
        return
    click.echo(f"{found.path}: {len(found.accounts)} account(s) OK")
    click.echo(f"  notifications: {len(notify.everywhere)} global target(s)")
    for name, account in found.accounts.items():
        secrets = len(senders.secrets.get(name, ()))
        limits = describe_limits(account.limits)
        click.echo(f"  {name}: {account.broker.kind}, {secrets} own webhook secret(s){limits}")


cli.add_command(dlq_group)
cli.add_command(status_command)
cli.add_command(alerts_group)
for command in (halt_command, resume_command, halts_command):  # the kill switch
    cli.add_command(command)
cli.add_command(template_command)
cli.add_command(notify_group)
for command in (orders_command, positions_command, projections_group):  # the read models
    cli.add_command(command)


def _default_secret_file() -> Path:
    path = secret_file(var_dir())
    if not path.exists():
        raise click.UsageError(f"no {path}: run `just up` once, or pass --secret-file")
    return path


def main() -> None:
    """Entry point of the `alertbridge` script."""
    cli()
