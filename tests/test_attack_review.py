"""Attacks from the review of the console, the formats, the one-pass decode and the new
NATS accounts: each test is a door an attacker tried (kept whether it held or not)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from console.app import create_app as console_app
from console.settings import ConsoleSettings
from contracts.headers import DeadLetterHeaders
from contracts.messages import Expired, alert_decoder, event_encoder
from contracts.risk import HALTS_STREAM, LIMITS_STREAM, account_halt_subject, breaker_subject
from contracts.subjects import ALERTS_STREAM, DLQ_STREAM, EVENTS_STREAM, alert_subject
from ingress.app import create_app
from ingress.settings import IngressSettings
from ops.platform.accounts import ingress_accounts
from ops.platform.settings import ROLE_JS_API, Secret, load
from projector.fold import Stored, Writer
from tests.secured import Secured, publish_alert
from tests.support import NatsServer, eventually
from tests.test_accounts import GOOD, write
from tests.workers import make_alert

WATCHED = (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM, HALTS_STREAM, LIMITS_STREAM)


async def _ready(client: AsyncTestClient[Any]) -> bool | None:
    return True if (await client.get("/readyz")).status_code == 200 else None


async def test_one_accounts_secret_never_places_an_alert_for_another_through_a_format(
    tmp_path: Path, nats_server: NatsServer, nc: Client
) -> None:
    """The account a body is checked for is the account its alert is stored for: a
    PineConnector `account=` parameter (read after the secret is checked) must not move
    an alert sent with `default`'s own secret to `crypto`."""
    env = write(tmp_path, GOOD)
    settings = load(IngressSettings, {**env, "ALERTBRIDGE_NATS_URL": nats_server.url,
                                      "ALERTBRIDGE_SECRETS": "global-secret-1"})  # fmt: skip
    async with AsyncTestClient(app=create_app(settings, ingress_accounts(env))) as client:
        await eventually(lambda: _ready(client))
        js = nc.jetstream()
        before = (await js.stream_info(ALERTS_STREAM)).state.messages
        line = b"123,buy,BINANCE:BTCUSDT,secret=default-secret-1,account=crypto,risk=1"
        answer = await client.post("/webhook", content=line)
        assert answer.status_code in (401, 422), answer.text
        after = (await js.stream_info(ALERTS_STREAM)).state.messages
        for seq in range(before + 1, after + 1):
            stored = alert_decoder.decode((await js.get_msg(ALERTS_STREAM, seq=seq)).data or b"")
            assert stored.account != "crypto"
        # The same fields as JSON (the key the line's fields travel under), read past
        # the secret check: refused, not stored.
        fields = ["buy", "BINANCE:BTCUSDT", "account=crypto", "risk=1"]
        smuggled = {"secret": "default-secret-1", "pineconnector": fields}
        answer = await client.post("/webhook", content=json.dumps(smuggled))
        assert answer.status_code in (401, 422), answer.text
        assert (await js.stream_info(ALERTS_STREAM)).state.messages == after
        # A second `account=` cannot smuggle one in past the first: refused, not stored.
        twice = b"123,buy,BINANCE:BTCUSDT,secret=default-secret-1,account=default,account=crypto"
        answer = await client.post("/webhook", content=twice)
        assert answer.status_code == 422 and "given twice" in answer.text
        assert (await js.stream_info(ALERTS_STREAM)).state.messages == after
        # Two `account` keys in one JSON body: the one the secret is checked for (the last,
        # on the one-pass path and the general one alike) is the one stored.
        rest = '"secret":"default-secret-1","symbol":"NASDAQ:AAPL","side":"buy"'
        for order, status in (('"account":"default","account":"crypto"', 401),
                              ('"account":"crypto","account":"default"', 200)):  # fmt: skip
            for extra in ("", ',"extra":1'):  # one pass; the general path (an unknown key)
                body = f"{{{order},{rest}{extra}}}".encode()
                assert (await client.post("/webhook", content=body)).status_code == status
        after = (await js.stream_info(ALERTS_STREAM)).state.messages
        for seq in range(before + 1, after + 1):
            stored = alert_decoder.decode((await js.get_msg(ALERTS_STREAM, seq=seq)).data or b"")
            assert stored.account == "default"
        # Its own account's line goes through, for that account.
        own = b"123,buy,BINANCE:BTCUSDT,secret=crypto-secret-1,account=crypto,risk=1"
        assert (await client.post("/webhook", content=own)).status_code == 200
        last = await js.get_msg(ALERTS_STREAM, seq=after + 1)
        assert alert_decoder.decode(last.data or b"").account == "crypto"


# --- the console: alert fields come from the internet -----------------------------------

XSS = "\"'><script>alert(1)<img src=x onerror=alert(2)>"  # no `/`: ids with one get no page
TOKEN = "t0ken-for-the-attack-tests-0123456789"


def _hostile_read_models(path: Path) -> None:
    """What the projector folds from an alert whose every free-text field is markup: the
    alert, its expiry (with a broker error echoing it) and its dead letter."""
    hostile = make_alert(f"id{XSS}", symbol=f"SYM{XSS}", comment=XSS, extras={"x": XSS})
    hostile = msgspec.structs.replace(hostile, account=f"acct{XSS}")
    expired = Expired(
        alert_id=hostile.id, account=hostile.account, symbol=hostile.symbol,
        at=datetime.now(UTC), age=99.0, max_age=60.0, attempts=1, stream_seq=1,
        last_error=f"broker said {XSS}",
    )  # fmt: skip
    why = DeadLetterHeaders(
        reason=f"expired {XSS}", deliveries=1, stream_seq=1, subject="alerts.in.x.y",
        at=datetime.now(UTC).isoformat(), last_error=f"broker said {XSS}",
    )  # fmt: skip
    writer = Writer(path)
    try:
        writer.apply(ALERTS_STREAM, [Stored(1, None, msgspec.json.encode(hostile))])
        writer.apply(EVENTS_STREAM, [Stored(1, None, event_encoder.encode(expired))])
        writer.apply(DLQ_STREAM, [Stored(1, why.to_headers(), msgspec.json.encode(hostile))])
    finally:
        writer.close()


async def test_markup_in_an_alert_is_text_on_every_page(tmp_path: Path) -> None:
    db = tmp_path / "projections.db"
    _hostile_read_models(db)
    app = console_app(ConsoleSettings(projections_db=str(db)), Secret(TOKEN), connect_nats=False)
    async with AsyncTestClient(app, base_url="https://console.test") as client:
        client.follow_redirects = False
        form = await client.get("/login")
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
        assert csrf is not None
        await client.post("/login", data={"token": TOKEN, "_csrf_token": csrf[1]})
        (row,) = (await client.get("/api/alerts")).json()["items"]
        page = f"/alerts/{quote(row['account'], safe='')}/{quote(row['alert_id'], safe='')}"
        seen = 0
        for path in ("/", "/dlq", page, f"{page}?replayed={quote(XSS)}", "/alerts/a/" + quote(XSS)):
            answer = await client.get(path)
            assert answer.status_code in (200, 404), (path, answer.status_code)
            assert "<script>" not in answer.text and "<img" not in answer.text, path
            seen += "&lt;script&gt;" in answer.text
        assert seen == 5  # each page did show the markup, as text


# --- the new NATS accounts: reply-subject injection through their imports --------------


async def test_the_consoles_and_workers_answers_are_never_stored_where_they_point(
    secured: Secured, as_console: Client, as_worker: Client, as_ops: JetStreamContext
) -> None:
    """Each role asks the server (a direct get, a stream's info, a KV write) with its
    reply on a subject of a stream it may write to: the answer would be a message stored
    from the server's bytes, not the role's (an alert read back as a new alert, a halt
    key's value as a breaker's). Every answer stays in the role's own account."""
    await publish_alert(as_ops, make_alert("there"))
    before = {s: (await as_ops.stream_info(s)).state.messages for s in WATCHED}
    for subject, body in (
        (f"{ROLE_JS_API}.DIRECT.GET.{ALERTS_STREAM}", b'{"seq":1}'),
        (f"{ROLE_JS_API}.DIRECT.GET.{DLQ_STREAM}", b'{"seq":1}'),
        (f"{ROLE_JS_API}.STREAM.INFO.{ALERTS_STREAM}", b""),
        (f"{ROLE_JS_API}.DIRECT.GET.KV_HALTS", b'{"last_by_subj":"$KV.HALTS.global"}'),
    ):
        for reply in (alert_subject("default", "NASDAQ:AAPL"), "events.replayed.default.X",
                      account_halt_subject("acme")):  # fmt: skip
            await as_console.publish(subject, body, reply=reply)
    for subject, body in (
        (f"{ROLE_JS_API}.DIRECT.GET.{ALERTS_STREAM}", b'{"seq":1}'),
        (f"{ROLE_JS_API}.DIRECT.GET.KV_HALTS", b'{"last_by_subj":"$KV.HALTS.global"}'),
    ):
        for reply in ("events.executed.default.X", "dlq.alerts.default.X",
                      breaker_subject("acme"), "$KV.LIMITS.ledger.acme"):  # fmt: skip
            await as_worker.publish(subject, body, reply=reply)
    for role, client in (("console", as_console), ("worker", as_worker)):
        await secured.js(role, client).stream_info(DLQ_STREAM)  # handled after the attacks
    await asyncio.sleep(0.5)  # what should never come is given a moment to come anyway
    after = {s: (await as_ops.stream_info(s)).state.messages for s in WATCHED}
    assert after == before


async def test_no_other_role_can_put_a_pub_ack_in_the_ingresss_reply_inbox(
    secured: Secured, as_ingress: Client, as_worker: Client, as_console: Client,
    as_ops: JetStreamContext,
) -> None:  # fmt: skip
    """A forged PubAck there would make the ingress answer 200 for an alert never stored
    (ops.platform.acks). Its inbox is in the INGRESS account, which exports nothing: no other
    role, and not even the operators' STREAMS account, can reach it. (Another connection
    as `ingress` can: the same role, holding the same password.)"""
    inbox = as_ingress.new_inbox()
    sub = await as_ingress.subscribe(f"{inbox}.*")
    await as_ingress.flush()
    forged = b'{"stream":"ALERTS","seq":1,"duplicate":true}'
    strangers = [await secured.connect(role) for role in ("projector", "notifier", "ops")]
    try:
        for client in (as_worker, as_console, *strangers):
            await client.publish(f"{inbox}.1", forged)
            await client.publish("_INBOX.alertbridge-ingress.>", forged)
            await client.flush()
        with pytest.raises(TimeoutError):
            await sub.next_msg(timeout=0.5)
    finally:
        for client in strangers:
            await client.close()
    sibling = await secured.connect("ingress")  # the control: the door the role itself has
    try:
        await sibling.publish(f"{inbox}.1", forged)
        assert (await sub.next_msg(timeout=5)).data == forged
    finally:
        await sibling.close()


async def test_the_consoles_static_files_and_query_strings_open_no_door(tmp_path: Path) -> None:
    """No file outside console/static, the token in a query string is no token, and
    logging in always lands on the console's own front page."""
    app = console_app(ConsoleSettings(projections_db=str(tmp_path / "p.db")), Secret(TOKEN),
                      connect_nats=False)  # fmt: skip
    async with AsyncTestClient(app, base_url="https://console.test") as client:
        client.follow_redirects = False
        for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
                     "/static/%2e%2e%2fsettings.py", "/static/..%5capp.py",
                     "/static//etc/passwd", "/static/%2fetc%2fpasswd"):  # fmt: skip
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert "import" not in answer.text and "root:" not in answer.text, path
        for path in (f"/api/alerts?token={TOKEN}", f"/api/events?access_token={TOKEN}",
                     f"/api/alerts?authorization=Bearer%20{TOKEN}"):  # fmt: skip
            assert (await client.get(path)).status_code == 401, path
        assert (await client.get(f"/?token={TOKEN}")).headers["location"] == "/login"
        form = await client.get("/login?next=https://evil.example/")
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
        assert csrf is not None and "evil.example" not in form.text
        answer = await client.post(
            "/login?next=https://evil.example/", data={"token": TOKEN, "_csrf_token": csrf[1]}
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/"
