"""Who an alert is, checked from outside: ids are scoped per account. Another account
cannot pre-empt an id: each account's alert is placed once under its own client order
id, and its events, the views (a real projector process) and `alertbridge alerts show
--account` keep the two apart. Real nats-server, real HTTP (uvicorn), orders counted at
the broker boundary."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client

from contracts.messages import Executed
from ingress.settings import IngressSettings
from ops.platform.accounts import ingress_accounts
from ops.platform.settings import load
from tests.alert_identity_support import (
    PARTITIONS,
    Counting,
    broker_fixture,  # noqa: F401 (the `broker` fixture)
    http_fixture,  # noqa: F401 (the `http` fixture)
    paper_fixture,  # noqa: F401 (the `paper` fixture)
    post,
    tv,
    worked_off,
    worker_settings_fixture,  # noqa: F401 (the `worker_settings` fixture)
)
from tests.ingress_support import serving_ingress
from tests.support import NatsServer, eventually, python_module
from tests.workers import events_of
from worker.execute import client_order_id

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")

# --- ids scoped per account ------------------------------------------------------------

ACCOUNTS = """
[accounts.default]
broker = "paper"
webhook_secrets_env = ["SECRET_DEFAULT"]

[accounts.alpha]
broker = "paper"
webhook_secrets_env = ["SECRET_ALPHA"]
"""
ALPHA_SECRET, DEFAULT_SECRET = "alpha-secret-1", "default-secret-1"


def cli(server: NatsServer, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ALERTBRIDGE_NATS_URL": server.url, **extra}
    return subprocess.run(
        [ALERTBRIDGE, *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


async def test_another_account_cannot_preempt_an_id(
    nats_server: NatsServer, nc: Client, broker: Counting, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    js = nc.jetstream()
    (tmp_path / "alertbridge.toml").write_text(ACCOUNTS)
    env = {"ALERTBRIDGE_CONFIG": str(tmp_path / "alertbridge.toml"),
           "SECRET_ALPHA": ALPHA_SECRET, "SECRET_DEFAULT": DEFAULT_SECRET}  # fmt: skip
    config = load(IngressSettings, {**env, "ALERTBRIDGE_NATS_URL": nats_server.url,
                                    "ALERTBRIDGE_PARTITIONS": str(PARTITIONS)})  # fmt: skip
    async with serving_ingress(config, ingress_accounts(env)) as url:
        # The attacker holds alpha's secret only, and fires the victim's next id first.
        attack = await post(http, url, tv(secret=ALPHA_SECRET, account="alpha", id="victim-1"))
        as_default = await http.post(f"{url}/webhook", content=tv(secret=ALPHA_SECRET, id="v"))
        assert as_default.status_code == 401  # alpha's secret is no key to default
        own = await post(http, url, tv(secret=DEFAULT_SECRET, id="victim-1"))
    assert attack == own == {"ok": True, "id": "victim-1", "duplicate": False}
    await eventually(lambda: worked_off(js))
    ours = {acct: client_order_id(acct, "victim-1") for acct in ("default", "alpha")}
    assert ours["default"] != ours["alpha"]
    assert broker.placed == {ours["default"]: 1, ours["alpha"]: 1}
    executed = [e for e in await events_of(js, "executed") if isinstance(e, Executed)]
    assert sorted((e.account, e.alert_id, e.client_order_id) for e in executed) == [
        ("alpha", "victim-1", ours["alpha"]),
        ("default", "victim-1", ours["default"]),
    ]
    # The views (a real projector process) keep each account's alert apart, and the CLI
    # shows the one asked for.
    projector = python_module("projector", projector_env(nats_server, tmp_path), tmp_path / "p.log")
    try:
        for acct in ("default", "alpha"):
            shown = partial(shown_executed, nats_server, tmp_path, acct)
            story = await eventually(shown, within=30, interval=0.3)
            assert (story["alert"]["account"], story["alert"]["alert_id"]) == (acct, "victim-1")
            assert story["alert"]["client_order_id"] == ours[acct]
            assert [(e["kind"], e["event"]["account"], e["event"]["client_order_id"])
                    for e in story["timeline"]] == [("executed", acct, ours[acct])]  # fmt: skip
    finally:
        projector.terminate()
        projector.wait(15)


def projector_env(server: NatsServer, root: Path) -> dict[str, str]:
    """`python -m projector` against `server` (no NATS users: the whole API), its file
    under `root`."""
    return {"ALERTBRIDGE_NATS_URL": server.url,
            "ALERTBRIDGE_PROJECTIONS_DB": str(root / "projections.db"),
            "ALERTBRIDGE_LAG_INTERVAL": "0.2", "ALERTBRIDGE_FETCH_TIMEOUT": "0.5"}  # fmt: skip


async def shown_executed(server: NatsServer, root: Path, account: str) -> dict[str, Any] | None:
    """`alertbridge alerts show victim-1 --account <account> --json`, once it says executed."""
    shown = await asyncio.to_thread(
        cli, server, "alerts", "show", "victim-1", "--account", account, "--json",
        ALERTBRIDGE_PROJECTIONS_DB=str(root / "projections.db"),
    )  # fmt: skip
    if shown.returncode != 0:  # no file yet, or the alert not folded in yet
        return None
    story: dict[str, Any] = json.loads(shown.stdout)
    return story if story["alert"]["status"] == "executed" else None
