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

Every refusal is a JSON object with a reason, and never repeats the secret; each is
logged once, within a bound (ingress.refusals). Before the body becomes an alert,
any configured secret still in it is redacted (ingress.redact).
Never 504: TradingView does not resend a 504.

The webhook is a Litestar ASGI route: at thousands of alerts a second Litestar's
request objects, parameter parsing and response building were a sixth of the CPU
(docs/performance.md), and the webhook needs none of them: it reads the raw body
whatever the Content-Type and answers JSON it encodes itself. It makes the request's
one span (SERVER, which is also the parent of the worker's CONSUMER span) and counts
its own answers. Everything else is ordinary Litestar.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec
from litestar import Litestar, Request, asgi, get
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.response import Response
from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from contracts import tracing
from ingress.answers import JSON, Reply, accepted, encode, refusal_reply, refusal_response
from ingress.auth import SIGNATURE_REQUIRED, WRONG_SECRET, Gate
from ingress.guard import DisconnectedError, Policy, RefusedError, SenderGuard
from ingress.onepass import read_body
from ingress.openapi import openapi_document
from ingress.parse import (
    FieldError,
    InvalidAlertError,
    alert_id,
    to_alert,
)
from ingress.publisher import Publisher, UnavailableError
from ingress.ratelimit import RateLimit
from ingress.redact import Redactor
from ingress.refusals import note
from ingress.telemetry import COUNTS_ITSELF, CountRequests, IngressMetrics
from ops.platform.accounts import ingress_accounts
from ops.platform.telemetry import PROMETHEUS_CONTENT_TYPE, metrics_text

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from litestar.types import HTTPScope, Receive, Scope, Send
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from contracts.messages import Alert
    from ingress.settings import IngressSettings
    from ops.platform.accounts import IngressAccounts

log = logging.getLogger("ingress")

ROUTE: Final = "/webhook"
ROUTE_WITH_SECRET: Final = "/webhook/{secret}"  # noqa: S105 (a route template)
_ALLOW_POST: Final = ((b"allow", b"POST"),)
_TRACE_HEADERS: Final = frozenset((b"traceparent", b"tracestate"))
_ids: Final = RandomIdGenerator()


class Webhook:
    """Authenticate, validate and store one webhook; the answer says what happened."""

    def __init__(
        self,
        gate: Gate,
        publisher: Publisher,
        guard: SenderGuard,
        account_rate: RateLimit | None,
        instruments: IngressMetrics,
        *,
        spans: bool = True,
    ) -> None:
        self._spans = tracing.Spans("alertbridge.ingress", record=spans)
        self._gate = gate
        self._publisher = publisher
        self._guard = guard
        self._account_rate = account_rate
        self._metrics = instruments
        self._redactor = Redactor(gate.every_secret())

    async def __call__(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        """The ASGI app mounted at /webhook: one span, one answer, counted.

        `scope["path"]` is what follows /webhook: `/`, or `/{secret}/`.
        """
        rest = scope["path"]
        secret = rest.strip("/") if rest.startswith("/") else None
        if secret is None or "/" in secret:  # /webhookx, /webhook/a/b
            await self._refuse(scope, 404, "not found").send(send)
            self._metrics.answered("unmatched", 404)
            return
        route = ROUTE_WITH_SECRET if secret else ROUTE
        recorded = self._spans.record
        if not recorded and not _sent_trace(scope):
            # Nobody records this request and its sender sent no trace context: no
            # OpenTelemetry work at all, only the new trace context the alert carries to
            # the worker, as an unrecorded span would have given it.
            await self._reply(scope, receive, send, secret, route, trace.INVALID_SPAN, _new_trace())
            return
        with self._spans.span(
            f"{scope['method']} {route}",
            kind=SpanKind.SERVER,
            parent=_parent(scope) if recorded else None,
            # Nothing recorded: only a trace context to pass on to the worker.
            unrecorded=None if recorded else _untraced(scope),
            attributes={"http.request.method": scope["method"], "http.route": route},
            record_exception=False,
        ) as span:
            await self._reply(scope, receive, send, secret, route, span, None)

    async def _reply(
        self,
        scope: HTTPScope,
        receive: Receive,
        send: Send,
        secret: str,
        route: str,
        span: Span,
        trace_headers: dict[str, str] | None,
    ) -> None:
        """Answer, count, and put the outcome on the span. `trace_headers`: the trace
        context the alert carries (None: the current one)."""
        try:
            reply = await self._answer(scope, receive, secret or None, span, trace_headers)
        except DisconnectedError:
            span.set_attribute("error.type", "disconnected")
            return
        except Exception as exc:  # answered, logged, and on the span
            log.error("unexpected error", exc_info=exc)
            span.record_exception(exc)
            reply = refusal_reply(500, "internal error")
        span.set_attribute("http.response.status_code", reply.status)
        if reply.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        self._metrics.answered(route, reply.status)
        await reply.send(send)

    async def _answer(
        self,
        scope: HTTPScope,
        receive: Receive,
        path_secret: str | None,
        span: Span,
        trace_headers: dict[str, str] | None,
    ) -> Reply:
        """The answer to one webhook (see the module docstring for the order of checks)."""
        if scope["method"] != "POST":
            return self._refuse(scope, 405, "method not allowed: POST alerts here", _ALLOW_POST)
        try:
            await self._guard.check(scope)
            body = await self._guard.body(receive)
        except RefusedError as refusal:
            self._note(scope, refusal.status, refusal.error)
            return refusal.reply()
        received_at = datetime.now(UTC)
        try:
            read = read_body(body, received_at=received_at, redactor=self._redactor)
        except InvalidAlertError as exc:
            return self._refuse(scope, 422, "invalid alert", errors=exc.errors)
        account = read.account
        secret = path_secret if path_secret is not None else read.secret
        if (reason := self._authenticate(scope, body, account, secret)) is not None:
            return self._refuse(scope, 401, reason, account=account)
        if (too_many := await self._over_rate(scope, account)) is not None:
            return too_many
        payload, alert = read.payload, read.alert
        if alert is None:
            # The general path: `payload` is the decoded body. Nothing stored holds a secret.
            payload = self._redactor.clean(read.payload or {}, body, read.secret)
            try:
                alert = to_alert(payload, received_at=received_at)
            except InvalidAlertError as exc:
                return self._refuse(scope, 422, "invalid alert", account=account, errors=exc.errors)
        if not self._gate.known(alert.account):
            unknown = [FieldError("account", "no such account")]
            return self._refuse(scope, 422, "invalid alert", errors=unknown)
        alert, digest = self._identified(scope, payload, alert)
        try:
            alert_key, duplicate = await self._publisher.publish(
                alert, digest=digest, trace=trace_headers
            )
        except UnavailableError as exc:
            log.warning("alert %s not stored: %s", alert.id, exc)
            return refusal_reply(503, "temporarily unavailable, retry")
        span.set_attribute(tracing.MESSAGE_ID, alert_key)
        log.debug("alert %s accepted (duplicate=%s)", alert_key, duplicate)
        return accepted(alert_key, duplicate)

    async def _over_rate(self, scope: Scope, account: str) -> Reply | None:
        """A 429 when the account has sent more than ALERTBRIDGE_ACCOUNT_RATE_LIMIT."""
        if self._account_rate is None:
            return None
        wait = await self._account_rate.wait(account)
        if wait is None:
            return None
        retry = ((b"retry-after", b"%d" % wait),)
        return self._refuse(scope, 429, "too many alerts for this account", retry, account)

    def _identified(
        self, scope: Scope, payload: dict[str, Any] | None, alert: Alert
    ) -> tuple[Alert, str | None]:
        """The alert with its final id, and the body's digest when the id is to come
        from the resend window (ingress.publisher). An explicit `id` stays as sent; a
        signed body's id covers its X-Timestamp (a replay inside the HMAC window is the
        same id, deduplicated for DUPLICATE_WINDOW); any other body is known by its hash
        for the resend window only. No payload: a one-pass body that named its id."""
        if payload is None or payload.get("id") is not None:
            return alert, None
        if self._gate.signs and _header(scope, b"x-signature") is not None:
            signed_at = _header(scope, b"x-timestamp") or ""
            return msgspec.structs.replace(alert, id=alert_id(payload, signed_at)), None
        return alert, alert.id

    def _refuse(
        self,
        scope: Scope,
        status: int,
        error: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        account: str | None = None,
        *,
        errors: list[FieldError] | None = None,
    ) -> Reply:
        """A refusal (with field-level reasons for a 422), logged."""
        fields = f" ({', '.join(e.field for e in errors)})" if errors else ""
        self._note(scope, status, error + fields, account)
        return refusal_reply(status, error, errors, headers)

    def _note(self, scope: Scope, status: int, reason: str, account: str | None = None) -> None:
        """Log a refusal (ingress.refusals): an account only when it is a configured one
        (the name is the sender's text), never the path (it may be the secret)."""
        if account is not None and not self._gate.configured(account):
            account = None
        note(status, reason, source=self._guard.sender(scope), account=account)

    def _authenticate(
        self, scope: Scope, body: bytes, account: str, secret: str | None
    ) -> str | None:
        """None when the sender may place alerts for `account`; else why not."""
        gate = self._gate
        if gate.signs:  # headers are only looked at when some HMAC key exists
            signature = _header(scope, b"x-signature")
            if signature is not None:
                timestamp = _header(scope, b"x-timestamp")
                return gate.verify(account, body, signature, timestamp, time.time())
            if gate.signature_required(account):
                return SIGNATURE_REQUIRED
        return None if gate.admits(account, secret) else WRONG_SECRET


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (names are lower case in ASGI)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _sent_trace(scope: Scope) -> bool:
    """Whether the request carries a trace context (TradingView's never do)."""
    return any(key in _TRACE_HEADERS for key, _ in scope["headers"])


def _new_trace() -> dict[str, str]:
    """The `traceparent` of a new, unsampled trace, as OpenTelemetry would write it."""
    trace_id, span_id = _ids.generate_trace_id(), _ids.generate_span_id()
    return {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-00"}


def _untraced(scope: Scope) -> Context:
    """The context of a request no span is recorded for: the sender's trace (or a new
    one) under a new span id, not sampled, as an unrecorded SERVER span would have."""
    parent = _parent(scope)
    sender = trace.get_current_span(parent).get_span_context() if parent else None
    trace_id = sender.trace_id if sender and sender.is_valid else _ids.generate_trace_id()
    span = trace.NonRecordingSpan(
        SpanContext(trace_id, _ids.generate_span_id(), is_remote=False, trace_flags=TraceFlags(0))
    )
    return trace.set_span_in_context(span, parent)


def _parent(scope: Scope) -> Context | None:
    """The sender's trace context, when it sent one (TradingView does not)."""
    carrier = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in _TRACE_HEADERS}
    return tracing.extract(carrier) if carrier else None


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own refusals (404, 405, ...) in the same JSON shape as ours."""
    return refusal_response(exc.status_code, str(exc.detail), headers=exc.headers)


def _internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unexpected error", exc_info=exc)
    return refusal_response(500, "internal error")


def create_app(
    settings: IngressSettings, accounts: IngressAccounts | None = None, *, spans: bool = True
) -> Litestar:
    """Build the ingress app; the process's telemetry must be set up before. `spans`:
    whether this process records spans (else webhooks make none, see `_untraced`)."""
    accounts = accounts or ingress_accounts({})
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
    guard = SenderGuard(Policy.from_settings(settings))
    hook = Webhook(gate, pub, guard, account_rate, instruments, spans=spans)
    document = encode(openapi_document(max_body_bytes=settings.max_body_bytes))

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await pub.start()
        try:
            yield
        finally:
            await pub.stop()
            log.info("ingress stopped")

    # A mount: Litestar 2.25 cannot route an ASGI handler with a path parameter.
    @asgi(ROUTE, is_mount=True, copy_scope=False, opt={COUNTS_ITSELF: True})
    async def webhook(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:  # no websockets here
            await hook(scope, receive, send)

    @get("/schema/openapi.json", media_type=JSON, include_in_schema=False)
    async def schema() -> bytes:
        return document

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
        route_handlers=[webhook, schema, healthz, readyz, prometheus],
        lifespan=[lifespan],
        middleware=[CountRequests(instruments)],
        openapi_config=None,  # the webhook's document is its own (ingress.openapi)
        exception_handlers={HTTPException: _http_error, 500: _internal_error},
        logging_config=None,  # the process's own (ops.platform.logs): JSON lines with trace ids
    )
