"""The Litestar app: `POST /webhook[/{secret}]`, `/healthz`, `/readyz`, `/metrics`, and the
webhook's OpenAPI document at `/schema/openapi.json`.

A webhook meets these checks in this order; each one that is optional costs
nothing unless configured (docs/security.md):

  413 body over the size cap             403 source address or client certificate
  429 too many from this source          408 body not received in time   (ingress.guard)
  422 not a JSON object, too deep or too large
  401 missing or wrong secret or signature
  429 too many for this account (counted only once the sender is known)
  422 invalid alert, field by field
  503 NATS down or slow: the sender retries
  200 {"ok": true, "id", "duplicate"} only after JetStream acknowledged the alert

Every refusal is a JSON object with a reason, and never repeats the secret.
Never 504: TradingView does not resend a 504.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath, RawBody
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.response import Response

from ingress.answers import JSON, Accepted, answer, encode, refuse
from ingress.auth import SIGNATURE_REQUIRED, WRONG_SECRET, Gate
from ingress.guard import Policy, SenderGuard
from ingress.openapi import WebhookOperation, openapi_config
from ingress.parse import FieldError, InvalidAlertError, decode_body, pop_secret, to_alert
from ingress.publisher import Publisher, UnavailableError
from ingress.ratelimit import RateLimit
from ingress.telemetry import CountRequests, IngressMetrics
from ops.accounts import load_accounts
from ops.telemetry import PROMETHEUS_CONTENT_TYPE, metrics_text

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ops.accounts import Accounts
    from ops.settings import IngressSettings

log = logging.getLogger("ingress")


class Webhook:
    """Authenticate, validate and store one webhook; the answer says what happened."""

    def __init__(self, gate: Gate, publisher: Publisher, account_rate: RateLimit | None) -> None:
        self._gate = gate
        self._publisher = publisher
        self._account_rate = account_rate

    async def receive(
        self, request: Request[Any, Any, Any], body: bytes, path_secret: str | None
    ) -> Response[bytes]:
        """The answer to one webhook (see the module docstring for the order of checks)."""
        received_at = datetime.now(UTC)
        try:
            payload = decode_body(body)
        except InvalidAlertError as exc:
            return refuse(422, "invalid alert", exc.errors)
        body_secret = pop_secret(payload)
        account = payload.get("account", "default")
        account = account if isinstance(account, str) else ""
        secret = path_secret if path_secret is not None else body_secret
        if (reason := self._authenticate(request, body, account, secret)) is not None:
            return refuse(401, reason)
        if self._account_rate is not None:
            wait = await self._account_rate.wait(account)
            if wait is not None:
                return refuse(429, "too many alerts for this account", headers=_retry(wait))
        try:
            alert = to_alert(payload, received_at=received_at)
        except InvalidAlertError as exc:
            return refuse(422, "invalid alert", exc.errors)
        if not self._gate.known(alert.account):
            return refuse(422, "invalid alert", [FieldError("account", "no such account")])
        try:
            duplicate = await self._publisher.publish(alert)
        except UnavailableError as exc:
            log.warning("alert %s not stored: %s", alert.id, exc)
            return refuse(503, "temporarily unavailable, retry")
        log.info("alert %s accepted (duplicate=%s)", alert.id, duplicate)
        return answer(200, Accepted(ok=True, id=alert.id, duplicate=duplicate))

    def _authenticate(
        self, request: Request[Any, Any, Any], body: bytes, account: str, secret: str | None
    ) -> str | None:
        """None when the sender may place alerts for `account`; else why not."""
        gate = self._gate
        if gate.signs:  # headers are only looked at when some HMAC key exists
            signature = request.headers.get("x-signature")
            if signature is not None:
                timestamp = request.headers.get("x-timestamp")
                return gate.verify(account, body, signature, timestamp, time.time())
            if gate.signature_required(account):
                return SIGNATURE_REQUIRED
        return None if gate.admits(account, secret) else WRONG_SECRET


def _retry(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own refusals (404, 405, 413, ...) in the same JSON shape as ours."""
    return refuse(exc.status_code, str(exc.detail), headers=exc.headers)


def _internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unexpected error", exc_info=exc)
    return refuse(500, "internal error")


def create_app(settings: IngressSettings, accounts: Accounts | None = None) -> Litestar:
    """Build the ingress app; the process's telemetry must be set up before."""
    accounts = accounts or load_accounts({})
    gate = Gate(
        settings.secrets,
        accounts,
        hmac_keys=settings.hmac_secrets,
        hmac_required=settings.hmac_required,
        hmac_window=settings.hmac_window,
    )
    instruments = IngressMetrics()
    pub = Publisher(settings, instruments)
    account_rate = (
        RateLimit(settings.account_rate_limit, "account") if settings.account_rate_limit else None
    )
    hook = Webhook(gate, pub, account_rate)
    policy = Policy.from_settings(settings)
    guarded = [SenderGuard(policy)] if policy.active else []

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await pub.start()
        try:
            yield
        finally:
            await pub.stop()
            log.info("ingress stopped")

    @post("/webhook", status_code=200, middleware=guarded, operation_class=WebhookOperation)
    async def webhook(request: Request[Any, Any, Any], body: RawBody) -> Response[bytes]:
        return await hook.receive(request, body, None)

    @post(
        "/webhook/{secret:str}",
        status_code=200,
        middleware=guarded,
        operation_class=WebhookOperation,
        description="The same, with the secret as the last path segment (TradingView's URL).",
    )
    async def webhook_path_secret(
        request: Request[Any, Any, Any], body: RawBody, secret: FromPath[str]
    ) -> Response[bytes]:
        return await hook.receive(request, body, secret)

    @get("/metrics", media_type=PROMETHEUS_CONTENT_TYPE, include_in_schema=False)
    async def prometheus() -> bytes:
        return metrics_text()

    @get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @get("/readyz", include_in_schema=False)
    async def readyz() -> Response[bytes]:
        problems = await pub.ready()
        return Response(
            encode({"ok": not problems, "problems": problems}),
            status_code=503 if problems else 200,
            media_type=JSON,
        )

    return Litestar(
        route_handlers=[webhook, webhook_path_secret, healthz, readyz, prometheus],
        lifespan=[lifespan],
        middleware=[CountRequests(instruments)],
        plugins=[OpenTelemetryPlugin(OpenTelemetryConfig(exclude=["/metrics", "/healthz"]))],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=openapi_config(),
        exception_handlers={HTTPException: _http_error, 500: _internal_error},
        logging_config=None,  # the process's own (ops.logs): JSON lines with trace ids
    )
