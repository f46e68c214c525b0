"""The ingress over real HTTP (in-process ASGI client) against a real nats-server."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from contracts.headers import MSG_ID
from contracts.messages import Alert, alert_msg_id
from contracts.subjects import ALERTS_STREAM
from ingress.app import create_app
from ingress.openapi import LIMITS
from ingress.settings import IngressSettings
from ops.platform.settings import load
from tests.support import SAMPLES, NatsServer, eventually, free_port

SECRETS = "7f3c9a1e,abcdefgh"  # the secrets the TradingView samples carry
Client_ = AsyncTestClient[Any]


def settings_for(url: str, **extra: str) -> IngressSettings:
    env = {
        "ALERTBRIDGE_NATS_URL": url,
        "ALERTBRIDGE_SECRETS": SECRETS,
        "ALERTBRIDGE_PARTITIONS": "4",
        "ALERTBRIDGE_MAX_BODY_BYTES": "2048",
        "ALERTBRIDGE_PUBLISH_TIMEOUT": "0.5",
        **extra,
    }
    return load(IngressSettings, env)


async def _ready(client: Client_) -> bool | None:
    response = await client.get("/readyz")
    return True if response.status_code == 200 else None


@pytest.fixture
async def client(nats_server: NatsServer, nc: Client) -> AsyncIterator[Client_]:
    """The ingress app, connected and ready (streams provisioned by `nc`)."""
    async with AsyncTestClient(app=create_app(settings_for(nats_server.url))) as c:
        await eventually(lambda: _ready(c))
        yield c


async def stored(nc: Client) -> int:
    info = await nc.jetstream().stream_info(ALERTS_STREAM)
    return info.state.messages


def body(**fields: Any) -> bytes:
    return json.dumps(
        {"secret": "7f3c9a1e", "symbol": "NASDAQ:AAPL", "side": "buy", **fields}
    ).encode()


async def test_sample_accepted_only_after_it_is_stored(client: Client_, nc: Client) -> None:
    raw = (SAMPLES / "strategy-order-fill.json").read_bytes()
    response = await client.post(
        "/webhook", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["ok"] is True and answer["duplicate"] is False
    assert await stored(nc) == 1
    msg = await nc.jetstream().get_msg(ALERTS_STREAM, seq=1, direct=True)
    assert msg.headers is not None
    assert msg.headers[MSG_ID] == alert_msg_id("default", answer["id"])
    assert msg.data is not None and msg.subject is not None
    alert = msgspec.json.decode(msg.data, type=Alert)
    assert (alert.id, alert.symbol, alert.side, alert.quantity) == (
        answer["id"],
        "DOGEUSDT",
        "buy",
        10000,
    )
    assert b"abcdefgh" not in msg.data  # the passphrase is stripped before publishing
    assert msg.subject.startswith("alerts.in.default.DOGEUSDT.")


async def test_without_spans_the_alert_carries_the_senders_trace_or_a_new_one(
    nats_server: NatsServer, nc: Client
) -> None:
    """A process that records no spans makes none, yet the stored alert carries a trace
    context, as an unrecorded span would give it: the sender's trace under a span id of
    the ingress's own, or a new trace. (With spans: tests/test_observability.py.)"""
    sender = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    app = create_app(settings_for(nats_server.url), spans=False)
    async with AsyncTestClient(app=app) as c:
        await eventually(lambda: _ready(c))
        traced = {"traceparent": sender}
        first = await c.post("/webhook", content=body(id="traced-1"), headers=traced)
        second = await c.post("/webhook", content=body(id="traced-2"))
    assert (first.status_code, second.status_code) == (200, 200)
    js = nc.jetstream()
    carried = [
        (await js.get_msg(ALERTS_STREAM, seq=seq, direct=True)).headers or {} for seq in (1, 2)
    ]
    _, trace_id, span_id, flags = carried[0]["traceparent"].split("-")
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span_id != "00f067aa0ba902b7" and int(span_id, 16) != 0
    assert flags == "00"  # not recorded here
    _, new_trace, new_span, _ = carried[1]["traceparent"].split("-")
    assert new_trace != trace_id and int(new_trace, 16) != 0 and int(new_span, 16) != 0


async def test_resend_is_a_duplicate_and_stored_once(client: Client_, nc: Client) -> None:
    raw = (SAMPLES / "futures-short-entry.json").read_bytes()
    first = (await client.post("/webhook", content=raw)).json()
    second = (await client.post("/webhook", content=raw)).json()
    assert first == {"ok": True, "id": "ES1!-Short Entry-2025-01-15T14:30:01Z", "duplicate": False}
    assert second == {**first, "duplicate": True}
    assert await stored(nc) == 1


async def test_text_plain_json_body_is_read(client: Client_) -> None:
    response = await client.post(
        "/webhook", content=body(qty=1), headers={"Content-Type": "text/plain; charset=utf-8"}
    )
    assert response.status_code == 200


async def test_secret_in_path_and_every_rotated_secret_work(client: Client_, nc: Client) -> None:
    no_secret = json.dumps({"ticker": "BTCUSDT", "action": "buy", "qty": 1}).encode()
    for secret in ("7f3c9a1e", "abcdefgh"):
        response = await client.post(f"/webhook/{secret}", content=no_secret)
        assert response.status_code == 200, response.text
    # Same body twice → same hash id → the second is a duplicate.
    assert await stored(nc) == 1


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/webhook", {"symbol": "AAPL", "side": "buy"}),
        ("/webhook", {"secret": "wrong-secret", "symbol": "AAPL", "side": "buy"}),
        ("/webhook", {"secret": 7, "symbol": "AAPL", "side": "buy"}),
        ("/webhook/wrong-secret", {"symbol": "AAPL", "side": "buy"}),
        # A path secret wins over a body secret: a wrong path secret is refused.
        ("/webhook/wrong-secret", {"secret": "7f3c9a1e", "symbol": "AAPL", "side": "buy"}),
    ],
)
async def test_bad_secret_is_401_and_nothing_published(
    client: Client_, nc: Client, path: str, payload: dict[str, Any]
) -> None:
    response = await client.post(path, content=json.dumps(payload).encode())
    assert response.status_code == 401
    assert response.json() == {"ok": False, "error": "missing or wrong secret"}
    assert await stored(nc) == 0


async def test_oversized_body_is_413(client: Client_, nc: Client) -> None:
    response = await client.post("/webhook", content=body(comment="x" * 4096))
    assert response.status_code == 413
    assert await stored(nc) == 0


@pytest.mark.parametrize(
    ("raw", "field", "needle"),
    [
        ((SAMPLES / "broken-json.txt").read_bytes(), "body", "byte 35"),
        ((SAMPLES / "plain-text.txt").read_bytes(), "body", "JSON object is required"),
        (body(side="hold"), "side", "must be one of"),
        (body(qty=-1), "quantity", ">"),
        (body(order_type="limit"), "limit_price", "required"),
    ],
)
async def test_invalid_alert_is_422_with_reasons(
    client: Client_, nc: Client, raw: bytes, field: str, needle: str
) -> None:
    response = await client.post("/webhook", content=raw, headers={"Content-Type": "text/plain"})
    assert response.status_code == 422
    answer = response.json()
    assert answer["ok"] is False
    reasons = {e["field"]: e["reason"] for e in answer["errors"]}
    assert needle in reasons[field]
    assert await stored(nc) == 0


async def test_every_field_error_is_reported_at_once(client: Client_) -> None:
    raw = json.dumps({"secret": "7f3c9a1e", "qty": "many"}).encode()
    response = await client.post("/webhook", content=raw)
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"symbol", "side", "quantity"}


async def test_nats_unreachable_is_503_and_not_ready(caplog: pytest.LogCaptureFixture) -> None:
    # The longest publish timeout allowed: a 503 that waited for it would take 2.5 s.
    url = f"nats://127.0.0.1:{free_port()}"
    settings = settings_for(url, ALERTBRIDGE_PUBLISH_TIMEOUT="2.5")
    async with AsyncTestClient(app=create_app(settings)) as c:
        started = time.monotonic()
        response = await c.post("/webhook", content=body(qty=1, id="down-1"))
        assert response.status_code == 503
        assert time.monotonic() - started < 2.5  # at once: no connection, nothing to wait for
        # Logged, as the README says: one WARNING naming the alert and why.
        (line,) = [
            r for r in caplog.records if r.name == "ingress" and "not stored" in r.getMessage()
        ]
        assert line.levelno == logging.WARNING
        assert line.getMessage() == "alert down-1 not stored: not connected to NATS"
        assert response.json() == {"ok": False, "error": "temporarily unavailable, retry"}
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and "nats: not connected" in ready.json()["problems"]
        assert (await c.get("/healthz")).status_code == 200


async def test_hung_server_is_503_within_the_publish_timeout(
    client: Client_, nats_server: NatsServer
) -> None:
    nats_server.pause()
    try:
        started = time.monotonic()
        response = await client.post("/webhook", content=body(qty=1, id="hung-1"))
        elapsed = time.monotonic() - started
    finally:
        nats_server.resume()
    assert response.status_code == 503
    # After the publish timeout (0.5 s), before TradingView gives up (3 s) and so in
    # time for its resend: the lower bound cannot flake, the upper one leaves 2.5 s.
    assert 0.5 <= elapsed < 3.0


async def test_missing_stream_is_503_and_not_ready(client: Client_, nc: Client) -> None:
    await nc.jetstream().delete_stream(ALERTS_STREAM)
    response = await client.post("/webhook", content=body(qty=1))
    assert response.status_code == 503
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["problems"] == ["stream ALERTS: missing"]
    with pytest.raises(NotFoundError):
        await nc.jetstream().stream_info(ALERTS_STREAM)


async def test_health_and_readiness(client: Client_) -> None:
    assert (await client.get("/healthz")).json() == {"ok": True}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ok": True, "problems": []}


async def test_secret_never_logged(client: Client_, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await client.post("/webhook", content=body(qty=1))
    await client.post("/webhook/7f3c9a1e", content=b'{"symbol":"X","side":"buy"}')
    await client.post("/webhook", content=json.dumps({"secret": "not-the-secret-123"}).encode())
    # The test's own HTTP client (httpx) logs the URL it calls; everything else is ours.
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert "accepted" in ours  # the requests were logged ...
    assert "7f3c9a1e" not in ours  # ... without the secret
    assert "not-the-secret-123" not in ours


async def test_other_methods_and_paths_are_refused_in_json(client: Client_, nc: Client) -> None:
    wrong_method = await client.get("/webhook")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {"ok": False, "error": "method not allowed: POST alerts here"}
    for path in ("/webhook/7f3c9a1e/extra", "/webhookx", "/nowhere"):
        response = await client.post(path, content=body(qty=1))
        assert response.status_code == 404, path
        assert response.json()["ok"] is False
    assert await stored(nc) == 0
    # A trailing slash is the same route.
    assert (await client.post("/webhook/", content=body(qty=1))).status_code == 200
    assert await stored(nc) == 1


async def test_the_webhook_document_is_served(client: Client_) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    assert set(document["paths"]) == {"/webhook", "/webhook/{secret}"}
    answers = document["paths"]["/webhook"]["post"]["responses"]
    assert {"200", "401", "413", "422", "503"} <= set(answers)
    # Generated with this process's body cap (ALERTBRIDGE_MAX_BODY_BYTES=2048 here).
    assert document["components"]["schemas"]["Alert"][LIMITS]["max_body_bytes"] == 2048
    assert "over 2048 bytes" in answers["413"]["description"]
