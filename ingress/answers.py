"""The JSON answers the ingress gives: what was stored, or why not.

One refusal, three renderings, each named for what it returns: `refusal_reply`, a
`Reply` the webhook sends straight onto ASGI (its hot path does not build a Litestar
`Response`); `refusal_response`, a Litestar `Response` for Litestar's own handlers;
`refusal_bytes`, a whole HTTP/1.1 response for the protocol layer, which refuses a
request head before any app sees it. The Structs are also the answers' schemas in the
OpenAPI document (ingress.openapi).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Final, Literal

import msgspec
from litestar.response import Response

from ingress.parse import FieldError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from litestar.types import Send

JSON: Final = "application/json"
_JSON_HEADER: Final = (b"content-type", JSON.encode())
_CLOSE_HEADER: Final = (b"connection", b"close")
_encoder: Final = msgspec.json.Encoder()


class Accepted(msgspec.Struct, frozen=True):
    """The answer to a stored alert."""

    ok: Literal[True]
    id: str
    duplicate: Annotated[bool, msgspec.Meta(description="already stored: a resend")]


class Refused(msgspec.Struct, frozen=True, omit_defaults=True):
    """The answer to an alert that was not stored; the sender learns why."""

    ok: Literal[False]
    error: Annotated[str, msgspec.Meta(min_length=1, description="why, for a person")]
    errors: Annotated[
        list[FieldError], msgspec.Meta(description="422: each invalid field and why")
    ] = msgspec.field(default_factory=list)


def encode(value: object) -> bytes:
    """JSON bytes of an answer."""
    return _encoder.encode(value)


class Reply:
    """A JSON answer to send on ASGI; `close` ends the connection after it."""

    __slots__ = ("body", "close", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        *,
        close: bool = False,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.close = close

    async def send(self, send: Send) -> None:
        """The response start and the whole body."""
        headers = [_JSON_HEADER, (b"content-length", b"%d" % len(self.body)), *self.headers]
        if self.close:
            headers.append(_CLOSE_HEADER)
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def accepted(alert_id: str, duplicate: bool) -> Reply:
    """200: the alert is stored (or already was)."""
    return Reply(200, encode(Accepted(ok=True, id=alert_id, duplicate=duplicate)))


def refusal_reply(
    status: int,
    error: str,
    errors: list[FieldError] | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    close: bool = False,
) -> Reply:
    """A refusal for the ASGI webhook, with its reason (and field-level reasons for a 422)."""
    body = encode(Refused(ok=False, error=error, errors=errors or []))
    return Reply(status, body, headers, close=close)


def refusal_response(
    status: int,
    error: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """The same refusal as a Litestar response (Litestar's own errors)."""
    body = encode(Refused(ok=False, error=error, errors=errors or []))
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def refusal_bytes(status: int, error: str) -> bytes:
    """The same refusal as a whole HTTP/1.1 response that closes the connection, for the
    protocol layer."""
    body = encode(Refused(ok=False, error=error))
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"content-type: {JSON}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body
