"""The accounts file: validation that names the account and key, sizing and guards,
per-account webhook secrets at the ingress, and the worker refusing unknown accounts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client

from contracts.messages import Alert
from ingress.app import create_app
from ingress.settings import IngressSettings
from ops.platform.accounts import (
    Account,
    AlpacaSettings,
    FixedNotional,
    PaperSettings,
    PercentOfEquity,
    WorkerAccounts,
    ingress_accounts,
    read_accounts,
    worker_accounts,
)
from ops.platform.settings import SettingsError, load
from tests.support import NatsServer, eventually
from tests.workers import make_alert, publish, terminal_events
from worker.accounts import Desk, check_symbol, size
from worker.brokers.paper import PaperBroker
from worker.consumer import Worker
from worker.errors import TerminalError
from worker.execute import to_order
from worker.settings import WorkerSettings

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")

GOOD = """
[accounts.default]
broker = "paper"
sizing = { kind = "fixed_quantity", quantity = 2 }
max_order_size = 50
allowed_symbols = ["NASDAQ:AAPL", "BINANCE:BTCUSDT"]
webhook_secrets_env = ["SECRET_DEFAULT"]
[accounts.default.symbols]
"BINANCE:BTCUSDT" = "BTC/USDT"
"NASDAQ:AAPL" = "AAPL"

[accounts.crypto]
broker = "ccxt"
webhook_secrets_env = ["SECRET_CRYPTO"]
ccxt = { exchange = "binance", api_key_env = "BINANCE_KEY", secret_env = "BINANCE_SECRET" }
"""

ENV = {
    "SECRET_DEFAULT": "default-secret-1",
    "SECRET_CRYPTO": "crypto-secret-1",
    "BINANCE_KEY": "k" * 16,
    "BINANCE_SECRET": "s" * 16,
}


def write(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "alertbridge.toml"
    path.write_text(text)
    return {**ENV, "ALERTBRIDGE_CONFIG": str(path)}


def test_a_good_file_loads(tmp_path: Path) -> None:
    env = write(tmp_path, GOOD)
    accounts = read_accounts(env)
    assert set(accounts.accounts) == {"default", "crypto"}
    assert accounts.accounts["default"].broker_symbol("BINANCE:BTCUSDT") == "BTC/USDT"
    assert accounts.accounts["default"].broker_symbol("ES1!") == "ES1!"
    assert accounts.accounts["crypto"].broker.kind == "ccxt"
    senders = ingress_accounts(env)
    assert not senders.known("nope")  # with a file, only its accounts exist
    assert senders.secrets["crypto"][0].matches(b"crypto-secret-1")
    assert "crypto-secret-1" not in repr(senders)


def test_each_role_reads_only_the_variables_it_uses(tmp_path: Path) -> None:
    """The internet-facing ingress never needs exchange keys; the worker never webhook
    secrets."""
    env = write(tmp_path, GOOD)
    exchange_keys = {k: v for k, v in env.items() if not k.startswith("BINANCE_")}
    assert ingress_accounts(exchange_keys).known("crypto")
    with pytest.raises(SettingsError, match="BINANCE_KEY"):
        worker_accounts(exchange_keys)
    no_secrets = {k: v for k, v in env.items() if not k.startswith("SECRET_")}
    assert set(worker_accounts(no_secrets).accounts) == {"default", "crypto"}
    with pytest.raises(SettingsError, match="SECRET_DEFAULT"):
        ingress_accounts(no_secrets)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[accounts.x]\nbroker = "robinhood"\n', "broker 'robinhood' is unknown"),
        ('[accounts.x]\nbroker = "alpaca"\nalpaca = { key_id_env = "K", secret_key_env = "S" }'
         '\n[accounts.x.ccxt]\nexchange = "b"\n', "a [ccxt] table, but the broker is 'alpaca'"),
        ('[accounts.x]\n[accounts.x.alpaca]\nkey_id_env = "K"\nsecret_key_env = "S"\n',
         "a [alpaca] table, but the broker is 'paper'"),
    ],
)  # fmt: skip
def test_an_unknown_or_ambiguous_broker_never_falls_through_to_paper(
    tmp_path: Path, text: str, needle: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(needle)):
        read_accounts(write(tmp_path, text))


def test_the_broker_is_one_tagged_value(tmp_path: Path) -> None:
    env = write(tmp_path, '[accounts.a]\nbroker = "alpaca"\n[accounts.a.alpaca]\n'
                'key_id_env = "K"\nsecret_key_env = "S"\n[accounts.b]\n')  # fmt: skip
    accounts = read_accounts(env).accounts
    assert accounts["a"].broker == AlpacaSettings(key_id_env="K", secret_key_env="S")
    assert accounts["b"].broker == PaperSettings()


@pytest.mark.parametrize(
    ("text", "env_drop", "needle"),
    [
        (GOOD.replace("max_order_size = 50", "max_ordersize = 50"), None,
         "account 'default': Object contains unknown field `max_ordersize`"),
        (GOOD.replace('ccxt = { exchange = "binance", ', "ccxt = { "), None,
         "account 'crypto': Object missing required field `exchange` (key 'ccxt')"),
        ('[accounts.x]\nbroker = "paper"\n[other]\na = 1', None, "only [accounts.<name>] tables"),
        (GOOD.replace('broker = "ccxt"', 'broker = "alpaca"'), None,
         "account 'crypto': broker 'alpaca' needs a [alpaca] table"),
        (GOOD, "BINANCE_SECRET", "account 'crypto': secret_env names BINANCE_SECRET, which is not"),
        (GOOD, "SECRET_DEFAULT", "account 'default': webhook_secrets_env names SECRET_DEFAULT"),
        (GOOD.replace('kind = "fixed_quantity", quantity = 2', 'kind = "martingale"'), None,
         "account 'default': Invalid value 'martingale' (key 'sizing.kind')"),
        (GOOD.replace("quantity = 2", "quantity = -2"), None, "Expected `float` > 0.0"),
        ("accounts = [", None, "not valid TOML"),
    ],
)  # fmt: skip
def test_a_bad_file_names_the_account_and_the_key(
    tmp_path: Path, text: str, env_drop: str | None, needle: str
) -> None:
    env = write(tmp_path, text)
    env.pop(env_drop or "", None)
    with pytest.raises(SettingsError) as caught:
        ingress_accounts(env)
        worker_accounts(env)
    assert needle in str(caught.value)


def test_a_short_account_secret_is_refused(tmp_path: Path) -> None:
    env = {**write(tmp_path, GOOD), "SECRET_CRYPTO": "short"}
    with pytest.raises(SettingsError, match="shorter than 8"):
        ingress_accounts(env)


def test_config_check_cli(tmp_path: Path) -> None:
    env = {**os.environ, **write(tmp_path, GOOD)}
    ok = subprocess.run([ALERTBRIDGE, "config", "check"], env=env, capture_output=True,
                        text=True, check=False, timeout=30)  # fmt: skip
    assert ok.returncode == 0 and "2 account(s) OK" in ok.stdout
    assert "crypto: ccxt, 1 own webhook secret(s)" in ok.stdout
    env.pop("BINANCE_KEY")
    bad = subprocess.run([ALERTBRIDGE, "config", "check"], env=env, capture_output=True,
                         text=True, check=False, timeout=30)  # fmt: skip
    assert bad.returncode == 2 and "BINANCE_KEY" in bad.stderr


def alert(**fields: Any) -> Alert:
    base: dict[str, Any] = {"id": "a", "symbol": "NASDAQ:AAPL", "side": "buy", "price": 200.0}
    return Alert(**{**base, **fields}, received_at=datetime.now(UTC))


@pytest.fixture
async def paper(tmp_path: Path) -> Any:
    broker = PaperBroker(tmp_path / "p.db", equity=50_000.0)
    yield broker
    await broker.close()


async def test_sizing_rules(paper: PaperBroker) -> None:
    assert await size(alert(quantity=None), Account(sizing=FixedNotional(notional=1000.0)),
                      paper, None) == 5.0  # fmt: skip
    assert await size(alert(quantity=None), Account(sizing=PercentOfEquity(percent=2.0)),
                      paper, None) == 5.0  # 2 % of 50,000 at 200  # fmt: skip
    assert await size(alert(quantity=3.0), Account(sizing=FixedNotional(notional=1000.0)),
                      paper, None) == 3.0  # the alert's own quantity wins  # fmt: skip
    with pytest.raises(TerminalError, match="needs the alert's price"):
        await size(alert(quantity=None, price=None), Account(sizing=FixedNotional(notional=1.0)),
                   paper, None)  # fmt: skip


async def test_a_close_is_the_whole_position_whatever_the_rule(paper: PaperBroker) -> None:
    rule = Account(sizing=FixedNotional(notional=1000.0))
    assert await size(alert(side="close", quantity=None, price=None), rule, paper, None) == 0.0


def test_paper_equity_comes_from_the_file(tmp_path: Path) -> None:
    env = write(tmp_path, GOOD + "\n[accounts.default.paper]\nequity = 2500\n")
    desk = Desk.from_accounts(worker_accounts(env), env, str(tmp_path / "p.db"))
    _, broker = desk.for_alert(alert())
    assert isinstance(broker, PaperBroker) and asyncio.run(broker.equity()) == 2500.0
    asyncio.run(desk.close())


async def test_guards_refuse_never_clip(paper: PaperBroker) -> None:
    capped = Account(max_order_size=10.0)
    with pytest.raises(TerminalError, match="above the account's max_order_size 10"):
        await size(alert(quantity=11.0), capped, paper, None)
    assert await size(alert(quantity=10.0), capped, paper, None) == 10.0
    with pytest.raises(TerminalError, match="not allowed"):
        check_symbol(alert(symbol="TSLA"), Account(allowed_symbols=("NASDAQ:AAPL",)))
    order = to_order(alert(), Account(symbols={"NASDAQ:AAPL": "AAPL"}), 1.0)
    assert order.symbol == "AAPL"


async def test_account_secrets_at_the_ingress(
    tmp_path: Path, nats_server: NatsServer, nc: Client
) -> None:
    env = write(tmp_path, GOOD)
    accounts = ingress_accounts(env)
    settings = load(IngressSettings, {**env, "ALERTBRIDGE_NATS_URL": nats_server.url,
                                      "ALERTBRIDGE_SECRETS": "global-secret-1"})  # fmt: skip
    async with AsyncTestClient(app=create_app(settings, accounts)) as client:
        await eventually(lambda: _ready(client))

        async def post(secret: str, account: str) -> int:
            body = {"secret": secret, "account": account, "symbol": "NASDAQ:AAPL", "side": "buy"}
            return (await client.post("/webhook", content=json.dumps(body))).status_code

        assert await post("default-secret-1", "default") == 200
        assert await post("crypto-secret-1", "crypto") == 200
        assert await post("global-secret-1", "crypto") == 200  # global secrets: every account
        assert await post("crypto-secret-1", "default") == 401  # one account's secret only
        assert await post("wrong-secret-1", "ghost") == 401  # no hint that it does not exist
        ghost = {"secret": "global-secret-1", "account": "ghost", "symbol": "X", "side": "buy"}
        response = await client.post("/webhook", content=json.dumps(ghost))
        assert response.status_code == 422
        assert response.json()["errors"] == [{"field": "account", "reason": "no such account"}]


async def _ready(client: AsyncTestClient[Any]) -> bool | None:
    return True if (await client.get("/readyz")).status_code == 200 else None


async def test_the_worker_refuses_an_account_the_file_does_not_have(
    tmp_path: Path, nc: Client, worker_env: dict[str, str]
) -> None:
    env = write(tmp_path, GOOD)
    settings = load(WorkerSettings, worker_env)
    accounts: WorkerAccounts = worker_accounts(env)
    desk = Desk.from_accounts(accounts, env, settings.paper_db)
    js = nc.jetstream()
    await publish(js, make_alert("ghost-1", account="ghost"))
    await publish(js, make_alert("too-big", quantity=51.0))
    await publish(js, make_alert("fine", quantity=None))  # sized by the rule: 2
    worker = Worker(js, desk, settings)
    import asyncio

    task = asyncio.create_task(worker.run())
    try:
        events = await eventually(lambda: terminal_events(js, 3))
    finally:
        worker.stop()
        await task
        await desk.close()
    outcome = {e.alert_id: e for e in events}
    assert "no account 'ghost'" in getattr(outcome["ghost-1"], "reason", "")
    assert "max_order_size" in getattr(outcome["too-big"], "reason", "")
    assert getattr(outcome["fine"], "quantity", None) == 2.0
