"""No configured secret is stored: secret keys in any case, and a secret anywhere else in
the body (nested, in a list, as a key, in a typed field, JSON-escaped), whether a global
secret, an account's own or an HMAC key. Checked in what the ALERTS stream holds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client

from contracts.messages import Alert
from contracts.subjects import ALERTS_STREAM
from ingress.app import create_app
from ingress.parse import decode_body, pop_secret
from ingress.redact import REDACTED, Redactor
from ops.platform.accounts import ingress_accounts
from ops.platform.settings import Secret
from tests.ingress_support import SECRET, settings, stored
from tests.support import NatsServer, eventually

ACCOUNT_SECRET = "acct-secret-0123456789"
HMAC_KEY = "hmac-key-" + "h" * 32
ACCOUNT_KEY = "acct-hmac-" + "a" * 32
EVERY = (SECRET, ACCOUNT_SECRET, HMAC_KEY, ACCOUNT_KEY)
ORDER = {"symbol": "NASDAQ:AAPL", "side": "buy", "qty": 1}
Client_ = AsyncTestClient[Any]

ACCOUNTS = """
[accounts.default]
broker = "paper"
webhook_secrets_env = ["ACCOUNT_SECRET"]
hmac_secrets_env = ["ACCOUNT_KEY"]
"""


# --- the secret keys, whatever their case -------------------------------------------


@pytest.mark.parametrize("key", ["Secret", "SECRET", "Passphrase", "TOKEN", "Key", "tOkEn"])
def test_pop_secret_removes_a_secret_key_in_any_case(key: str) -> None:
    payload: dict[str, Any] = {key: "s3cret-value", "symbol": "AAPL"}
    assert pop_secret(payload) == "s3cret-value"
    assert payload == {"symbol": "AAPL"}


def test_pop_secret_prefers_lower_case_keys_then_the_bodys_order() -> None:
    payload: dict[str, Any] = {"Secret": "first-in-body", "TOKEN": 7, "token": "lower", "x": 1}
    assert pop_secret(payload) == "lower"  # an exact lower-case key wins
    assert payload == {"x": 1}  # every casing is gone
    payload = {"Passphrase": 12345678, "SECRET": "second", "Token": "third"}
    assert pop_secret(payload) == "second"  # the first string in the body's order
    assert payload == {}


# --- the Redactor, on decoded bodies --------------------------------------------------


def _clean(body: bytes, secrets: tuple[str, ...] = (SECRET,)) -> dict[str, Any]:
    payload = decode_body(body)
    popped = pop_secret(payload)
    return Redactor([Secret(s) for s in secrets]).clean(payload, body, popped)


def test_a_body_without_a_stray_secret_is_not_copied() -> None:
    """The usual body: only the popped secret in it, no walk, the same dict back."""
    redactor = Redactor([Secret(SECRET)])
    body = json.dumps({"secret": SECRET, "symbol": "AAPL", "side": "buy"}).encode()
    payload = decode_body(body)
    popped = pop_secret(payload)
    assert redactor.clean(payload, body, popped) is payload


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"comment": f"by {SECRET}!"}, {"comment": REDACTED}),
        ({"meta": {"deep": {"note": SECRET}}}, {"meta": {"deep": {"note": REDACTED}}}),
        ({"list": ["a", f"x{SECRET}", 3]}, {"list": ["a", REDACTED, 3]}),
        ({SECRET: 1, "kept": 2}, {"kept": 2}),
        ({"nested": {f"k-{SECRET}": {"v": 1}}}, {"nested": {}}),
    ],
)
def test_a_secret_anywhere_is_redacted(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    body = json.dumps({"secret": SECRET, **fields}).encode()
    assert _clean(body) == expected


def _escaped(text: str) -> bytes:
    """`text` as JSON \\u escapes only: the raw bytes do not hold it, the decoded string does."""
    return "".join(f"\\u{ord(c):04x}" for c in text).encode()


def test_a_json_escaped_secret_is_redacted() -> None:
    body = b'{"comment":"' + _escaped(SECRET) + b'","other":"fine"}'
    assert SECRET.encode() not in body
    assert _clean(body) == {"comment": REDACTED, "other": "fine"}


def test_a_secret_with_characters_json_escapes_is_redacted() -> None:
    odd = 'quote"back\\slash-secret'
    body = json.dumps({"comment": f"<{odd}>", "symbol": "X"}).encode()
    assert _clean(body, (odd,)) == {"comment": REDACTED, "symbol": "X"}


def test_a_secret_of_digits_sent_as_a_number_is_redacted() -> None:
    body = b'{"n": 123456789012, "m": 5}'
    assert _clean(body, ("4567890",)) == {"n": REDACTED, "m": 5}


# --- through the real app, into the ALERTS stream -------------------------------------


@pytest.fixture
async def client(nats_server: NatsServer, nc: Client, tmp_path: Path) -> AsyncIterator[Client_]:
    (tmp_path / "accounts.toml").write_text(ACCOUNTS)
    env = {
        "ALERTBRIDGE_CONFIG": str(tmp_path / "accounts.toml"),
        "ACCOUNT_SECRET": ACCOUNT_SECRET,
        "ACCOUNT_KEY": ACCOUNT_KEY,
    }
    config = settings(nats_server.url, hmac_secrets=HMAC_KEY)
    async with AsyncTestClient(app=create_app(config, ingress_accounts(env))) as c:
        await eventually(lambda: _ready(c))
        yield c


async def _ready(client: Client_) -> bool | None:
    return True if (await client.get("/readyz")).status_code == 200 else None


async def _stored(nc: Client) -> tuple[bytes, Alert]:
    """The one stored message, all of it (subject, headers, data), and its alert."""
    msg = await nc.jetstream().get_msg(ALERTS_STREAM, seq=1, direct=True)
    assert msg.data is not None and msg.subject is not None
    everything = msg.subject.encode() + repr(msg.headers).encode() + msg.data
    return everything, msgspec.json.decode(msg.data, type=Alert)


@pytest.mark.parametrize(
    ("case", "path", "fields"),
    [
        ("path+Secret", f"/webhook/{SECRET}", {"Secret": SECRET}),
        ("Secret", "/webhook", {"Secret": SECRET}),
        ("casings", "/webhook", {"PASSPHRASE": SECRET, "Token": ACCOUNT_SECRET, "KEY": HMAC_KEY}),
        ("typed", "/webhook", {"secret": SECRET, "comment": f"is {SECRET}", "tag": ACCOUNT_KEY}),
        ("nested", "/webhook", {"secret": SECRET, "m": [HMAC_KEY, {"n": ACCOUNT_SECRET}]}),
        ("keys", "/webhook", {"secret": SECRET, ACCOUNT_SECRET: "a key", "strategy": {SECRET: 1}}),
        ("comment", f"/webhook/{SECRET}", {"comment": SECRET}),
    ],
)
async def test_no_configured_secret_reaches_the_stream(
    client: Client_, nc: Client, case: str, path: str, fields: dict[str, Any]
) -> None:
    # An id of its own: once redacted, two cases' bodies can hash alike.
    body = {**ORDER, "id": case, **fields}
    response = await client.post(path, content=json.dumps(body).encode())
    assert response.status_code == 200, response.text
    everything, alert = await _stored(nc)
    for secret in EVERY:
        assert secret.encode() not in everything
    assert not {k.lower() for k in alert.extras} & {"secret", "passphrase", "key", "token"}


async def test_an_escaped_secret_in_a_comment_is_stored_redacted(
    client: Client_, nc: Client
) -> None:
    raw = b'{"id":"escaped","symbol":"X","side":"buy","comment":"' + _escaped(SECRET) + b'"}'
    response = await client.post(f"/webhook/{SECRET}", content=raw)
    assert response.status_code == 200, response.text
    everything, alert = await _stored(nc)
    assert SECRET.encode() not in everything
    assert alert.comment == REDACTED


@pytest.mark.parametrize("field", ["symbol", "account", "id"])
async def test_a_name_that_holds_a_secret_is_refused(
    client: Client_, nc: Client, field: str
) -> None:
    """A redacted name is no name: not an order for the symbol "[redacted]"."""
    body = {"secret": SECRET, **ORDER, field: HMAC_KEY}
    response = await client.post("/webhook", content=json.dumps(body).encode())
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [{"field": field, "reason": "must not hold a secret"}]
    for secret in EVERY:
        assert secret not in response.text
    assert await stored(nc) == 0
