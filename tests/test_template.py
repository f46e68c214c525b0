"""`alertbridge template`: the messages it prints become the alerts they promise.

Each printed message is filled in as TradingView fills it (plain text substitution) and
judged by the ingress itself: by `--check` (which runs `python -m ingress.check`), by
the parser called here, and, for the strategy's, by a real ingress over HTTP that
stores it on a real nats-server. A broken message is refused field by field. The real
secret shows only with `--show-secret`.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from click.testing import CliRunner, Result
from nats.aio.client import Client

from contracts.messages import alert_decoder
from contracts.subjects import ALERTS_STREAM
from ingress.check import judge
from ingress.parse import decode_body, pop_secret, to_alert
from ops.tools.cli import cli
from ops.tools.template import SAMPLES, SECRET_PLACEHOLDER, fill
from tests.ingress_support import SECRET, serving_ingress, settings, stored
from tests.support import NatsServer

OWN_SECRET = "account-own-secret-123"
ACCOUNTS = """
[accounts.paper-1]
broker = "paper"
webhook_secrets_env = ["ALERTBRIDGE_SECRET_PAPER1"]
"""


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The CLI in an empty folder (no accounts file, no local stack) with no settings."""
    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.startswith("ALERTBRIDGE_")]:
        monkeypatch.delenv(name)
    return CliRunner()


def run(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(cli, ["template", *args], env=env, catch_exceptions=False)


def printed(result: Result) -> tuple[str, str]:
    """(the webhook URL, the message) from the command's stdout."""
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    url = lines[lines.index("Webhook URL (the alert's Notifications tab):") + 1]
    start = lines.index("Message (the alert's Message box):") + 1
    return url, "\n".join(lines[start:])


def parsed(message: str, **samples: str) -> tuple[str | None, Any]:
    """The message filled with samples, through the ingress's parser: (secret, alert)."""
    filled, unknown = fill(message, SAMPLES | samples)
    assert unknown == []
    payload = decode_body(filled.encode())
    secret = pop_secret(payload)
    return secret, to_alert(payload, received_at=datetime.now(UTC))


# --- what it prints ----------------------------------------------------------------


def test_a_strategys_message_carries_the_order_placeholders(runner: CliRunner) -> None:
    url, message = printed(run(runner, "--url", "https://alerts.example.com/webhook"))
    assert url == "https://alerts.example.com/webhook"
    placeholders = set(re.findall(r"\{\{([^}]+)\}\}", message))
    assert placeholders == {
        "ticker", "close", "timenow", "strategy.order.action", "strategy.order.contracts",
        "strategy.market_position", "strategy.order.id",
    }  # fmt: skip
    secret, alert = parsed(message)
    assert secret == SECRET_PLACEHOLDER
    assert (alert.symbol, alert.side, alert.quantity, alert.price) == ("AAPL", "buy", 10.0, 189.42)
    assert alert.tag == "Long Entry", "the order's name is a tag, never the alert's id"
    assert alert.timenow == datetime(2025, 1, 15, 14, 30, 1, tzinfo=UTC)
    assert alert.account == "default"


def test_a_strategys_exit_to_flat_closes_the_position(runner: CliRunner) -> None:
    _, message = printed(run(runner))
    _, alert = parsed(message, **{"strategy.order.action": "sell",
                                  "strategy.market_position": "flat"})  # fmt: skip
    assert alert.side == "close"


def test_each_firing_is_a_new_alert_and_a_resend_the_same(runner: CliRunner) -> None:
    """No `id` in the message: the body's hash, new with each {{timenow}}."""
    _, message = printed(run(runner))
    assert '"id"' not in message
    _, first = parsed(message)
    _, resend = parsed(message)
    _, later = parsed(message, timenow="2025-01-15T14:35:01Z")
    assert first.id == resend.id != later.id


@pytest.mark.parametrize("side", ["buy", "sell", "close"])
def test_an_indicators_message_has_its_fixed_side(runner: CliRunner, side: str) -> None:
    _, message = printed(run(runner, "--side", side))
    assert "strategy." not in message
    _, alert = parsed(message)
    assert alert.side == side
    assert alert.quantity is None, "the account's sizing decides"


def test_the_secret_in_the_url_leaves_the_body_without_one(runner: CliRunner) -> None:
    url, message = printed(run(runner, "--secret-in", "url", "--url", "https://a.example/webhook"))
    assert url == f"https://a.example/webhook/{SECRET_PLACEHOLDER}"
    secret, _ = parsed(message)
    assert secret is None


def test_the_url_comes_from_the_domain_setting(runner: CliRunner) -> None:
    url, _ = printed(run(runner, env={"ALERTBRIDGE_DOMAIN": "alerts.example.org"}))
    assert url == "https://alerts.example.org/webhook"
    url, _ = printed(run(runner))
    assert url == "https://YOUR_DOMAIN/webhook"


def test_a_port_tradingview_does_not_post_to_is_warned_about(runner: CliRunner) -> None:
    result = run(runner, "--url", "https://alerts.example.com:8443/webhook")
    assert "TradingView posts only to ports 80 and 443, not 8443" in result.stderr
    assert "warning" not in run(runner, "--url", "http://a.example/webhook").stderr


# --- the secret --------------------------------------------------------------------


def test_the_real_secret_is_never_printed_unless_asked(runner: CliRunner) -> None:
    env = {"ALERTBRIDGE_SECRETS": f"{SECRET},second-secret-999"}
    for args in ((), ("--secret-in", "url"), ("--side", "buy")):
        result = run(runner, *args, env=env)
        assert result.exit_code == 0
        assert SECRET not in result.output and "second-secret-999" not in result.output
        assert SECRET_PLACEHOLDER in result.stdout
        assert "ALERTBRIDGE_SECRETS or ALERTBRIDGE_SECRETS_FILE" in result.stderr
    url, message = printed(run(runner, "--show-secret", "--secret-in", "url", env=env))
    assert url.endswith(f"/webhook/{SECRET}") and SECRET_PLACEHOLDER not in message
    secret, _ = parsed(printed(run(runner, "--show-secret", env=env))[1])
    assert secret == SECRET


def test_show_secret_finds_the_file_setting_and_the_local_stacks(
    runner: CliRunner, tmp_path: Path
) -> None:
    (tmp_path / "secrets.txt").write_text(f"\n{SECRET}\n", encoding="utf-8")
    env = {"ALERTBRIDGE_SECRETS_FILE": str(tmp_path / "secrets.txt")}
    assert parsed(printed(run(runner, "--show-secret", env=env))[1])[0] == SECRET
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret").write_text("local-stack-secret\n", encoding="utf-8")
    assert parsed(printed(run(runner, "--show-secret"))[1])[0] == "local-stack-secret"
    given = ("--show-secret", "--secret-file", str(tmp_path / "secrets.txt"))
    assert parsed(printed(run(runner, *given))[1])[0] == SECRET


def test_show_secret_without_any_secret_says_where_to_put_one(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["template", "--show-secret"])
    assert result.exit_code == 2
    assert "no secret found: set ALERTBRIDGE_SECRETS or ALERTBRIDGE_SECRETS_FILE" in result.output
    empty = Path("empty")
    empty.write_text("\n", encoding="utf-8")
    result = runner.invoke(cli, ["template", "--show-secret", "--secret-file", "empty"])
    assert result.exit_code == 2 and "cannot read a secret from empty" in result.output


def test_an_accounts_own_secret_is_named_and_shown_only_when_asked(runner: CliRunner) -> None:
    Path("alertbridge.toml").write_text(ACCOUNTS, encoding="utf-8")
    env = {"ALERTBRIDGE_SECRET_PAPER1": OWN_SECRET, "ALERTBRIDGE_SECRETS": SECRET}
    result = run(runner, "--account", "paper-1", env=env)
    assert OWN_SECRET not in result.output and SECRET not in result.output
    assert "the secret of account 'paper-1' (the value of $ALERTBRIDGE_SECRET_PAPER1)" in (
        result.stderr
    )
    secret, alert = parsed(
        printed(run(runner, "--account", "paper-1", "--show-secret", env=env))[1]
    )
    assert (secret, alert.account) == (OWN_SECRET, "paper-1")


def test_an_account_the_file_does_not_name_is_refused(runner: CliRunner) -> None:
    Path("alertbridge.toml").write_text(ACCOUNTS, encoding="utf-8")
    result = runner.invoke(cli, ["template", "--account", "paper-2"])
    assert result.exit_code == 2
    assert "alertbridge.toml has no account 'paper-2'" in result.output


# --- --check: the ingress's own parser ------------------------------------------------


def check(runner: CliRunner, text: str, *args: str) -> Result:
    Path("message.txt").write_text(text, encoding="utf-8")
    return runner.invoke(cli, ["template", "--check", "message.txt", *args])


def test_check_accepts_every_printed_template_and_says_what_each_field_becomes(
    runner: CliRunner,
) -> None:
    for args in ((), ("--side", "sell"), ("--secret-in", "url")):
        _, message = printed(run(runner, *args))
        result = check(runner, message)
        assert result.exit_code == 0, result.output
        assert "accepted: with sample values, message.txt becomes this alert" in result.stdout
        assert re.search(r"^  symbol +AAPL$", result.stdout, re.MULTILINE)
        assert re.search(r"^  price +189\.42$", result.stdout, re.MULTILINE)
        in_body = "secret: in the body (not shown)" in result.stdout
        assert in_body == ("--secret-in" not in args)
        assert (f"replace {SECRET_PLACEHOLDER}" in result.stderr) == in_body
    _, message = printed(run(runner))
    lines = check(runner, message).stdout
    assert re.search(r"^  side +buy$", lines, re.MULTILINE)
    assert re.search(r"^  quantity +10\.0$", lines, re.MULTILINE)
    assert re.search(r"^  tag +Long Entry$", lines, re.MULTILINE)
    assert "(a hash of the body: TradingView's resends of it are one alert)" in lines


def test_check_is_the_parsers_verdict(runner: CliRunner) -> None:
    """What --check prints is what ingress.check (the webhook's steps) makes of the body."""
    _, message = printed(run(runner, "--account", "acc-9"))
    filled, _ = fill(message, SAMPLES)
    verdict = judge(filled.encode(), {})
    assert verdict.alert is not None and verdict.secret == "body"
    result = check(runner, message)
    for field in ("account", "symbol", "side", "quantity", "order_type", "price", "tag", "id"):
        assert re.search(rf"^  {field} +{re.escape(str(verdict.alert[field]))}( |$)",
                         result.stdout, re.MULTILINE), field  # fmt: skip


def test_check_uses_the_samples_given(runner: CliRunner) -> None:
    _, message = printed(run(runner))
    result = check(runner, message, "--sample", "strategy.market_position=flat",
                   "--sample", "{{ticker}}=BTCUSDT")  # fmt: skip
    assert re.search(r"^  side +close$", result.stdout, re.MULTILINE)
    assert re.search(r"^  symbol +BTCUSDT$", result.stdout, re.MULTILINE)
    result = check(runner, message, "--sample", "no-equals-sign")
    assert result.exit_code == 2 and "give NAME=VALUE" in result.output


def test_a_broken_template_is_refused_with_the_json_error(runner: CliRunner) -> None:
    result = check(runner, '{"ticker": "{{ticker}}", "action": "buy",}')
    assert result.exit_code == 1
    assert "refused (422): message.txt would not become an alert" in result.stdout
    assert "  body: a JSON object is required: " in result.stdout


def test_a_template_with_wrong_fields_is_refused_field_by_field(runner: CliRunner) -> None:
    text = json.dumps({"secret": "x" * 12, "action": "{{strategy.order.action}}",
                       "qty": "{{strategy.order.contracts}}"})  # fmt: skip
    result = check(runner, text, "--sample", "strategy.order.contracts=-3")
    assert result.exit_code == 1
    errors = result.stdout.split("would not become an alert\n", 1)[1].splitlines()
    assert any(line.startswith("  quantity: Expected `float` > 0") for line in errors), errors
    assert any(line.startswith("  symbol: required") for line in errors), errors
    assert "x" * 12 not in result.output, "the secret is never repeated"


def test_check_warns_of_unknown_placeholders_and_a_missing_secret(runner: CliRunner) -> None:
    result = check(runner, '{"ticker": "{{tickr}}", "action": "buy", "rsi": "{{plot_0}}"}')
    assert result.exit_code == 0
    assert "warning: {{tickr}} is not a TradingView placeholder: sent as written" in result.stderr
    assert "plot_0" not in result.stderr
    assert "secret: none in the body: TradingView must post to the URL ending in " in (
        result.stdout
    )


def test_check_refuses_an_account_the_accounts_file_does_not_name(runner: CliRunner) -> None:
    Path("alertbridge.toml").write_text(ACCOUNTS, encoding="utf-8")
    text = '{"account": "paper-2", "ticker": "{{ticker}}", "action": "buy"}'
    result = check(runner, text)
    assert result.exit_code == 1 and "  account: no such account" in result.stdout
    result = check(runner, text.replace("paper-2", "paper-1"))
    assert result.exit_code == 0, result.output


def test_check_says_so_when_the_parser_cannot_run(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ops.tools.template.sys.executable", "/bin/false")
    result = check(runner, '{"ticker": "X", "action": "buy"}')
    assert result.exit_code == 1
    assert "the ingress's parser failed: exit 1" in result.output


# --- end to end: a real ingress stores what the template promised ---------------------


async def test_the_strategy_template_is_stored_by_a_real_ingress(
    nats_server: NatsServer, nc: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    env = {"ALERTBRIDGE_SECRETS": SECRET}
    async with serving_ingress(settings(nats_server.url)) as base:
        for secret_in in ("body", "url"):
            result = runner.invoke(cli, ["template", "--show-secret", "--secret-in", secret_in,
                                         "--url", f"{base}/webhook"], env=env)  # fmt: skip
            url, message = printed(result)
            filled, _ = fill(message, SAMPLES | {"strategy.order.id": f"entry-{secret_in}"})
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.post(url, content=filled.encode())
            assert response.status_code == 200, response.text
    assert await stored(nc) == 2
    js = nc.jetstream()
    for seq, secret_in in ((1, "body"), (2, "url")):
        raw = await js.get_msg(ALERTS_STREAM, seq=seq, direct=True)
        assert raw.data is not None
        alert = alert_decoder.decode(raw.data)
        assert (alert.symbol, alert.side, alert.quantity) == ("AAPL", "buy", 10.0)
        assert alert.tag == f"entry-{secret_in}"
        assert SECRET not in msgspec.json.encode(alert).decode()
