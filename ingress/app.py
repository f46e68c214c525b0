"""The Litestar app: `POST /webhook[/{secret}]`, `/healthz`, `/readyz`.

Answers (all JSON):
  200 {"ok": true, "id", "duplicate"}  only after JetStream acknowledged the alert
  401 bad or missing secret            413 body over the size cap
  422 invalid alert, field by field    503 NATS down or slow: the sender retries
Never 504: TradingView does not resend a 504.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec
from litestar import Litestar, get, post
from litestar.params import FromPath, RawBody
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.response import Response

from ingress.auth import Gate
from ingress.parse import FieldError, InvalidAlertError, decode_body, pop_secret, to_alert
from ingress.publisher import Publisher, UnavailableError
from ingress.telemetry import CountRequests, IngressMetrics
from ops.accounts import load_accounts
from ops.telemetry import PROMETHEUS_CONTENT_TYPE, metrics_text

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ops.accounts import Accounts
    from ops.settings import IngressSettings

log = logging.getLogger("ingress")

_encoder: Final = msgspec.json.Encoder()
_JSON: Final = "application/json"


class Accepted(msgspec.Struct, frozen=True):
    """The answer to a stored alert."""

    ok: bool
    id: str
    duplicate: bool


class Refused(msgspec.Struct, frozen=True, omit_defaults=True):
    """The answer to an alert that was not stored; the sender learns why."""

    ok: bool
    error: str
    errors: list[FieldError] = msgspec.field(default_factory=list)


def _answer(status: int, body: msgspec.Struct) -> Response[bytes]:
    return Response(_encoder.encode(body), status_code=status, media_type=_JSON)


def _refuse(status: int, error: str, errors: list[FieldError] | None = None) -> Response[bytes]:
    return _answer(status, Refused(ok=False, error=error, errors=errors or []))


async def receive(
    body: bytes, path_secret: str | None, gate: Gate, publisher: Publisher
) -> Response[bytes]:
    """Authenticate, validate and store one webhook; the answer says what happened."""
    received_at = datetime.now(UTC)
    try:
        payload = decode_body(body)
    except InvalidAlertError as exc:
        return _refuse(422, "invalid alert", exc.errors)
    body_secret = pop_secret(payload)
    account = payload.get("account", "default")
    account = account if isinstance(account, str) else ""
    if not gate.admits(account, path_secret if path_secret is not None else body_secret):
        return _refuse(401, "missing or wrong secret")
    try:
        alert = to_alert(payload, received_at=received_at)
    except InvalidAlertError as exc:
        return _refuse(422, "invalid alert", exc.errors)
    if not gate.known(alert.account):
        return _refuse(422, "invalid alert", [FieldError("account", "no such account")])
    try:
        duplicate = await publisher.publish(alert)
    except UnavailableError as exc:
        log.warning("alert %s not stored: %s", alert.id, exc)
        return _refuse(503, "temporarily unavailable, retry")
    log.info("alert %s accepted (duplicate=%s)", alert.id, duplicate)
    return _answer(200, Accepted(ok=True, id=alert.id, duplicate=duplicate))


def create_app(settings: IngressSettings, accounts: Accounts | None = None) -> Litestar:
    """Build the ingress app; the process's telemetry must be set up before."""
    gate = Gate(settings.secrets, accounts or load_accounts({}))
    instruments = IngressMetrics()
    pub = Publisher(settings, instruments)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await pub.start()
        try:
            yield
        finally:
            await pub.stop()
            log.info("ingress stopped")

    @post("/webhook", status_code=200)
    async def webhook(body: RawBody) -> Response[bytes]:
        return await receive(body, None, gate, pub)

    @post("/webhook/{secret:str}", status_code=200)
    async def webhook_path_secret(body: RawBody, secret: FromPath[str]) -> Response[bytes]:
        return await receive(body, secret, gate, pub)

    @get("/metrics", media_type=PROMETHEUS_CONTENT_TYPE)
    async def prometheus() -> bytes:
        return metrics_text()

    @get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @get("/readyz")
    async def readyz() -> Response[bytes]:
        problems = await pub.ready()
        return Response(
            _encoder.encode({"ok": not problems, "problems": problems}),
            status_code=503 if problems else 200,
            media_type=_JSON,
        )

    return Litestar(
        route_handlers=[webhook, webhook_path_secret, healthz, readyz, prometheus],
        lifespan=[lifespan],
        middleware=[CountRequests(instruments)],
        plugins=[OpenTelemetryPlugin(OpenTelemetryConfig(exclude=["/metrics", "/healthz"]))],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=None,
        logging_config=None,  # the process's own (ops.logs): JSON lines with trace ids
    )
