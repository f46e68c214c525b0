"""HMAC-signed webhooks (X-Signature over X-Timestamp + "." + body) against a real
nats-server: valid, wrong, stale, replayed, required, and per-account keys."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client

from ingress.app import create_app
from ingress.auth import sign
from ingress.settings import load_ingress
from ops.platform.accounts import ingress_accounts
from ops.platform.settings import SettingsError
from tests.ingress_support import SECRET, alert, ingress_env, settings, stored
from tests.support import NatsServer, eventually

KEY = "k" * 32
OTHER_KEY = "o" * 32
Client_ = AsyncTestClient[Any]


def signed(body: bytes, key: str = KEY, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    return {"X-Signature": sign(key.encode(), timestamp, body), "X-Timestamp": timestamp}


async def _ready(client: Client_) -> bool | None:
    return True if (await client.get("/readyz")).status_code == 200 else None


@pytest.fixture
async def client(nats_server: NatsServer, nc: Client) -> AsyncIterator[Client_]:
    config = settings(nats_server.url, hmac_secrets=KEY)
    async with AsyncTestClient(app=create_app(config)) as c:
        await eventually(lambda: _ready(c))
        yield c


async def test_a_valid_signature_admits_without_a_secret(client: Client_, nc: Client) -> None:
    body = alert(secret=None)
    response = await client.post("/webhook", content=body, headers=signed(body))
    assert response.status_code == 200, response.text
    assert await stored(nc) == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong key", "wrong signature"),
        ("tampered body", "wrong signature"),
        ("garbage", "wrong signature"),
        ("stale", "X-Timestamp outside the 300 s replay window"),
        ("future", "X-Timestamp outside the 300 s replay window"),
        ("no timestamp", "X-Timestamp (unix seconds) required with X-Signature"),
        ("bad timestamp", "X-Timestamp (unix seconds) required with X-Signature"),
    ],
)
async def test_a_bad_signature_is_401_even_with_the_right_secret(
    client: Client_, nc: Client, case: str, reason: str
) -> None:
    body = alert()  # carries the right secret: a present signature must still verify
    headers = {
        "wrong key": signed(body, key=OTHER_KEY),
        "tampered body": signed(alert(qty=2)),
        "garbage": {**signed(body), "X-Signature": "sha256=" + "0" * 64},
        "stale": signed(body, at=time.time() - 301),
        "future": signed(body, at=time.time() + 301),
        "no timestamp": {"X-Signature": signed(body)["X-Signature"]},
        "bad timestamp": {**signed(body), "X-Timestamp": "-1"},
    }[case]
    response = await client.post("/webhook", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"ok": False, "error": reason}
    assert SECRET not in response.text
    assert await stored(nc) == 0


async def test_a_replay_inside_the_window_is_a_duplicate(client: Client_, nc: Client) -> None:
    body = alert(secret=None, qty=3)
    headers = signed(body)
    first = (await client.post("/webhook", content=body, headers=headers)).json()
    again = (await client.post("/webhook", content=body, headers=headers)).json()
    assert first["duplicate"] is False and again == {**first, "duplicate": True}
    assert await stored(nc) == 1


async def test_unsigned_requests_still_use_the_secret(client: Client_, nc: Client) -> None:
    assert (await client.post("/webhook", content=alert())).status_code == 200
    assert (await client.post("/webhook", content=alert(secret="wrong-one"))).status_code == 401
    assert await stored(nc) == 1


async def test_when_required_unsigned_requests_are_401(nats_server: NatsServer, nc: Client) -> None:
    config = settings(nats_server.url, hmac_secrets=KEY, hmac_required="true")
    async with AsyncTestClient(app=create_app(config)) as c:
        await eventually(lambda: _ready(c))
        response = await c.post("/webhook", content=alert())  # the right secret, unsigned
        assert response.status_code == 401
        assert response.json() == {
            "ok": False,
            "error": "signature required (X-Signature and X-Timestamp)",
        }
        body = alert(qty=2)
        assert (await c.post("/webhook", content=body, headers=signed(body))).status_code == 200
    assert await stored(nc) == 1


ACCOUNTS = """
[accounts.default]
broker = "paper"

[accounts.signed]
broker = "paper"
hmac_secrets_env = ["SIGNED_KEY"]
hmac_required = true
"""


async def test_per_account_keys(tmp_path: Path, nats_server: NatsServer, nc: Client) -> None:
    path = tmp_path / "alertbridge.toml"
    path.write_text(ACCOUNTS)
    env = {"ALERTBRIDGE_CONFIG": str(path), "SIGNED_KEY": OTHER_KEY}
    accounts = ingress_accounts(env)
    config = settings(nats_server.url, config=str(path))
    async with AsyncTestClient(app=create_app(config, accounts)) as c:
        await eventually(lambda: _ready(c))

        async def post(body: bytes, **headers: str) -> int:
            return (await c.post("/webhook", content=body, headers=headers)).status_code

        own = alert(secret=None, account="signed")
        assert await post(own, **signed(own, key=OTHER_KEY)) == 200
        # The account requires signatures: its alerts with the global secret are refused.
        assert await post(alert(account="signed", qty=2)) == 401
        # One account's key does not sign for another.
        theirs = alert(secret=None, account="default", qty=3)
        assert await post(theirs, **signed(theirs, key=OTHER_KEY)) == 401
        assert await post(alert(account="default", qty=4)) == 200
    assert await stored(nc) == 2


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"hmac_secrets": "short-key"}, "HMAC key #1 (from ALERTBRIDGE_HMAC_SECRETS"),
        ({"hmac_secrets": KEY, "duplicate_window": "60"}, "ALERTBRIDGE_HMAC_WINDOW must not"),
        ({"hmac_window": "0"}, "ALERTBRIDGE_HMAC_WINDOW"),
    ],
)
def test_bad_hmac_settings_name_the_variable(extra: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_ingress(ingress_env("nats://127.0.0.1:4222", **extra))
    assert needle in str(caught.value)
    assert "short-key" not in str(caught.value)


def test_sign_is_the_documented_construction() -> None:
    import hashlib
    import hmac

    body = json.dumps({"symbol": "X", "side": "buy"}).encode()
    expected = hmac.new(KEY.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(KEY.encode(), "1700000000", body) == "sha256=" + expected
