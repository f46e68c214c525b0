"""The JSON answers the ingress gives: what was stored, or why not."""

from __future__ import annotations

from typing import Final

import msgspec
from litestar.response import Response

from ingress.parse import FieldError

JSON: Final = "application/json"
_encoder: Final = msgspec.json.Encoder()


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


def encode(value: object) -> bytes:
    """JSON bytes of an answer."""
    return _encoder.encode(value)


def answer(status: int, body: msgspec.Struct) -> Response[bytes]:
    """A JSON response."""
    return Response(encode(body), status_code=status, media_type=JSON)


def refuse(
    status: int,
    error: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """A refusal with its reason (and field-level reasons for a 422)."""
    body = encode(Refused(ok=False, error=error, errors=errors or []))
    return Response(body, status_code=status, media_type=JSON, headers=headers)
