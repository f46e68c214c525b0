"""`alertbridge template`: the message to paste into TradingView's alert dialog, and its URL.

A strategy's message carries TradingView's order placeholders, so each order it fills
becomes an alert; an indicator's carries a fixed side (`--side buy`) and leaves the size
to the account. The secret goes in the body (the default) or as the URL's last path
segment: TradingView cannot set headers (ingress.auth). A template has no `id`: the
ingress names the alert by a hash of the body, which `{{timenow}}` makes new at each
firing and which TradingView's resends repeat, so a resend is one alert, not two.

No real secret is printed unless asked (`--show-secret`): the default is a placeholder,
and stderr says where the secret the ingress accepts is kept.

`--check FILE` fills TradingView's placeholders in a message with sample values, as
TradingView does (plain text substitution), and hands the result to the ingress's own
parser, `python -m ingress.check`, run as a process: the operator's tools do not import
the ingress (tests/test_layers.py), and a copy of its rules would drift from them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import click
import msgspec

from ops.platform.accounts import read_accounts
from ops.platform.settings import PREFIX, SettingsError
from ops.tools.paths import read_secret, secret_file, var_dir

SECRET_PLACEHOLDER: Final = "YOUR_WEBHOOK_SECRET"  # noqa: S105 -- a placeholder, not a secret
DOMAIN_VAR: Final = PREFIX + "DOMAIN"
DEFAULT_DOMAIN: Final = "YOUR_DOMAIN"
# TradingView's placeholders (../shared/tradingview/README.md) and what --check puts there.
SAMPLES: Final[dict[str, str]] = {
    "ticker": "AAPL",
    "exchange": "NASDAQ",
    "interval": "5",
    "open": "189.10",
    "high": "189.60",
    "low": "188.95",
    "close": "189.42",
    "volume": "15230",
    "time": "2025-01-15T14:25:00Z",
    "timenow": "2025-01-15T14:30:01Z",
    "strategy.order.action": "buy",
    "strategy.order.contracts": "10",
    "strategy.order.price": "189.40",
    "strategy.order.id": "Long Entry",
    "strategy.order.comment": "Long Entry",
    "strategy.order.alert_message": "",
    "strategy.market_position": "long",
    "strategy.market_position_size": "10",
    "strategy.prev_market_position": "flat",
    "strategy.prev_market_position_size": "0",
    "strategy.position_size": "10",
}
PLOT_SAMPLE: Final = "1.5"  # {{plot_0}} ... {{plot_19}}: an indicator's plotted values
PLACEHOLDER: Final = re.compile(r"\{\{\s*(?P<name>[^{}]*?)\s*\}\}")
PLOT: Final = re.compile(r"plot_\d+\Z")
CHECK_TIMEOUT: Final = 60.0
EXIT_REFUSED: Final = 1
# The order the fields of an accepted alert are shown in (contracts.messages.Alert).
SHOWN: Final = ("account", "symbol", "side", "quantity", "order_type", "price", "limit_price",
                "stop_price", "take_profit", "stop_loss", "tag", "comment", "time", "timenow",
                "id", "extras")  # fmt: skip


class _Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """What `python -m ingress.check` answers (ingress.check.Verdict, read as JSON)."""

    secret: str | None = None
    alert: dict[str, Any] | None = None
    errors: list[dict[str, str]] = msgspec.field(default_factory=list)
    note: str | None = None


def message(*, side: str | None, account: str | None, secret: str | None) -> dict[str, Any]:
    """The alert message: a strategy's order placeholders, or an indicator's fixed `side`."""
    fields: dict[str, Any] = {}
    if secret is not None:
        fields["secret"] = secret
    if account is not None:
        fields["account"] = account
    fields["ticker"] = "{{ticker}}"
    if side is None:
        fields["action"] = "{{strategy.order.action}}"
        fields["contracts"] = "{{strategy.order.contracts}}"
        # "flat" after the order: an exit, which closes the whole position (ingress.parse).
        fields["market_position"] = "{{strategy.market_position}}"
        fields["order_id"] = "{{strategy.order.id}}"  # the order's name: the alert's tag
    else:
        fields["action"] = side  # no size: the account's sizing decides
    fields["price"] = "{{close}}"
    fields["timenow"] = "{{timenow}}"  # a new alert at each firing; a resend repeats it
    return fields


def webhook_url(url: str | None, secret: str | None) -> str:
    """The URL TradingView posts to: `--url`, else https://$ALERTBRIDGE_DOMAIN/webhook."""
    base = url or f"https://{os.environ.get(DOMAIN_VAR, '').strip() or DEFAULT_DOMAIN}/webhook"
    return f"{base.rstrip('/')}/{secret}" if secret is not None else base


def fill(text: str, samples: dict[str, str]) -> tuple[str, list[str]]:
    """`text` with each placeholder replaced by its sample, and the names that have none
    (left as written, as TradingView leaves what it does not know)."""
    unknown: list[str] = []

    def sample(match: re.Match[str]) -> str:
        name = match["name"]
        if name in samples:
            return samples[name]
        if PLOT.match(name):
            return PLOT_SAMPLE
        unknown.append(name)
        return match[0]

    return PLACEHOLDER.sub(sample, text), unknown


def real_secret(account: str | None, given: Path | None) -> str:
    """The secret to show: `--secret-file`, else the account's own, else a global one
    (ALERTBRIDGE_SECRETS, ALERTBRIDGE_SECRETS_FILE), else the local stack's."""
    if given is not None:
        return _first_secret(given)
    for var in _account_secret_vars(account):
        if value := os.environ.get(var, "").strip():
            return value
    if first := os.environ.get(PREFIX + "SECRETS", "").split(",")[0].strip():
        return first
    if path := os.environ.get(PREFIX + "SECRETS_FILE", "").strip():
        return _first_secret(Path(path))
    local = secret_file(var_dir())
    if local.exists():
        return _first_secret(local)
    raise click.UsageError(
        f"no secret found: set {PREFIX}SECRETS or {PREFIX}SECRETS_FILE, run `just up` once, "
        "or pass --secret-file"
    )


def where_secret(account: str | None) -> str:
    """Where the secret the ingress accepts for `account` is kept (never the value)."""
    own = _account_secret_vars(account)
    anywhere = (
        f"{PREFIX}SECRETS or {PREFIX}SECRETS_FILE on the server "
        f"(the local stack's: {secret_file(var_dir())})"
    )
    if own:
        return f"the secret of account {account!r} (the value of ${own[0]}) or one of {anywhere}"
    return f"one of {anywhere}"


def check(path: Path, samples: dict[str, str]) -> int:
    """Print what the message in `path` becomes once TradingView fills it in; 0 when accepted."""
    text = path.read_text(encoding="utf-8")
    filled, unknown = fill(text, samples)
    for name in unknown:
        click.echo(f"warning: {{{{{name}}}}} is not a TradingView placeholder: sent as written",
                   err=True)  # fmt: skip
    if "{{strategy.order.alert_message}}" in text.replace(" ", ""):
        click.echo("note: {{strategy.order.alert_message}} is your Pine script's text: check it "
                   "with --sample strategy.order.alert_message='...'", err=True)  # fmt: skip
    verdict = _ingress_check(filled.encode())
    if SECRET_PLACEHOLDER in filled:
        click.echo(f"note: replace {SECRET_PLACEHOLDER} with your secret before pasting", err=True)
    if verdict.secret is None:
        click.echo("secret: none in the body: TradingView must post to the URL ending "
                   "in /webhook/<your secret>")  # fmt: skip
    else:
        click.echo("secret: in the body (not shown)")
    if verdict.note:
        click.echo(f"note: {verdict.note}", err=True)
    if verdict.alert is None:
        click.echo(f"refused (422): {path} would not become an alert")
        for error in verdict.errors:
            click.echo(f"  {error['field']}: {error['reason']}")
        return EXIT_REFUSED
    click.echo(f"accepted: with sample values, {path} becomes this alert")
    _show_alert(verdict.alert)
    return 0


def _show_alert(alert: dict[str, Any]) -> None:
    """One line per field the alert got, in the order of contracts.messages.Alert."""
    width = max(len(name) for name in SHOWN)
    for name in SHOWN:
        value = alert.get(name)
        if value is None or value == {}:
            continue
        if name == "id":
            value = f"{value} (a hash of the body: TradingView's resends of it are one alert)"
        elif name == "extras":
            value = f"{json.dumps(value)} (kept for the audit trail)"
        click.echo(f"  {name:<{width}}  {value}")


def _ingress_check(body: bytes) -> _Verdict:
    """The ingress's own parser on `body`, in a process of its own (ingress.check)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ingress.check"],
            input=body, capture_output=True, timeout=CHECK_TIMEOUT, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise click.ClickException("the ingress's parser did not answer in time") from None
    try:
        return msgspec.json.decode(done.stdout, type=_Verdict)
    except msgspec.DecodeError:
        reason = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise click.ClickException(f"the ingress's parser failed: {reason}") from None


def _account_secret_vars(account: str | None) -> tuple[str, ...]:
    """The variables holding `account`'s own webhook secrets (none without a file)."""
    if account is None:
        return ()
    try:
        found = read_accounts(os.environ)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    if found.path is not None and account not in found.accounts:
        raise click.UsageError(f"{found.path} has no account {account!r}")
    configured = found.accounts.get(account)
    return configured.webhook_secrets_env if configured is not None else ()


def _first_secret(path: Path) -> str:
    try:
        return read_secret(path)
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"cannot read a secret from {path}: {exc}") from None


def _samples(overrides: tuple[str, ...]) -> dict[str, str]:
    samples = dict(SAMPLES)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.UsageError(f"--sample {item!r}: give NAME=VALUE")
        samples[name.strip().strip("{}").strip()] = value
    return samples


@click.command("template")
@click.option(
    "--side",
    type=click.Choice(["buy", "sell", "close"]),
    default=None,
    help="an indicator's alert with this fixed side (default: a strategy's)",
)
@click.option("--account", default=None, help="the account the alert is for")
@click.option(
    "--secret-in",
    "carrier",
    type=click.Choice(["body", "url"]),
    default="body",
    show_default=True,
    help="where the secret travels",
)
@click.option(
    "--url", default=None, help=f"the webhook URL (default: https://${DOMAIN_VAR}/webhook)"
)
@click.option("--show-secret", is_flag=True, help="print the real secret, not a placeholder")
@click.option(
    "--secret-file",
    type=click.Path(path_type=Path),
    default=None,
    help="with --show-secret: take the secret from this file",
)
@click.option(
    "--check",
    "check_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="check a message: fill TradingView's placeholders, run the ingress's parser",
)
@click.option(
    "--sample",
    "sample_values",
    multiple=True,
    metavar="NAME=VALUE",
    help="with --check: the value of one placeholder (e.g. strategy.market_position=flat)",
)
def template_command(
    side: str | None, account: str | None, carrier: str, url: str | None, show_secret: bool,
    secret_file: Path | None, check_file: Path | None, sample_values: tuple[str, ...],
) -> None:  # fmt: skip
    """Print TradingView's alert message and webhook URL, or check a message (--check)."""
    if check_file is not None:
        sys.exit(check(check_file, _samples(sample_values)))
    secret = real_secret(account, secret_file) if show_secret else SECRET_PLACEHOLDER
    target = webhook_url(url, secret if carrier == "url" else None)
    if (port := urlsplit(target).port) not in (None, 80, 443):
        click.echo(f"warning: TradingView posts only to ports 80 and 443, not {port}", err=True)
    body = message(side=side, account=account, secret=secret if carrier == "body" else None)
    click.echo("Webhook URL (the alert's Notifications tab):")
    click.echo(target)
    click.echo("")
    click.echo("Message (the alert's Message box):")
    click.echo(json.dumps(body, indent=2))
    if not show_secret:
        click.echo(f"{SECRET_PLACEHOLDER}: {where_secret(account)}; --show-secret prints it",
                   err=True)  # fmt: skip
