"""The OpenAPI document of the webhook, served at `/schema/openapi.json`.

The handlers take the raw body (the secret must be removed before anything else
reads it, and TradingView's Content-Type says nothing reliable), so Litestar
could not see the alert's shape anyway: this module states it, with every answer
the routes can give (the webhook is an ASGI route, which Litestar does not document).
Tests fuzz the ingress from this document (tests/test_fuzz.py).
"""

from __future__ import annotations

from typing import Any, Final

from litestar.openapi.spec import (
    Info,
    OpenAPI,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    RequestBody,
    Schema,
    Server,
)

from ingress.parse import MAX_VALUES, SIDES

_STR, _NUM, _OBJ = OpenAPIType.STRING, OpenAPIType.NUMBER, OpenAPIType.OBJECT
_PRINTABLE: Final = "^[^\\x00-\\x1f\\x7f]+$"
_NAME: Final = Schema(type=_STR, min_length=1, max_length=64, pattern=_PRINTABLE)
_TEXT: Final = Schema(type=_STR, max_length=256)
_AMOUNT: Final = Schema(type=_NUM, exclusive_minimum=0, exclusive_maximum=1e15)
_SIDE: Final = Schema(type=_STR, enum=sorted(SIDES), description="case-insensitive")
_TIME: Final = Schema(
    one_of=[Schema(type=_STR, format=OpenAPIFormat.DATE_TIME), Schema(type=_NUM)],
    description="RFC 3339, or epoch seconds or milliseconds",
)
_SECRET: Final = Schema(type=_STR, description="the webhook secret (never stored or echoed)")

ALERT: Final = Schema(
    type=_OBJ,
    title="Alert",
    description=(
        "A TradingView alert message. The Content-Type is not relied on: the body is read "
        "as a JSON object. Aliases: symbol/ticker; side/action/order_action/"
        "strategy.order_action; quantity/qty/contracts/order_contracts/"
        "strategy.order_contracts; order_type/type; price/order_price/close; "
        "limit_price/limit; stop_price/stop; take_profit/tp; stop_loss/sl; "
        "tag/order_id; comment/order_comment. Every other field is kept as `extras`. "
        "At most 8 levels deep, 256 values, strings of 4096 characters."
    ),
    properties={
        "secret": _SECRET,
        "passphrase": _SECRET,
        "id": Schema(
            one_of=[
                Schema(type=_STR, min_length=1, max_length=128, pattern=_PRINTABLE),
                Schema(type=OpenAPIType.INTEGER),
            ],
            description="the alert id (dedup key); without it, a hash of the body",
        ),
        "account": _NAME,
        "symbol": _NAME,
        "ticker": _NAME,
        "side": _SIDE,
        "action": _SIDE,
        "quantity": _AMOUNT,
        "qty": _AMOUNT,
        "contracts": _AMOUNT,
        "order_type": Schema(type=_STR, enum=["limit", "market", "stop"]),
        "price": _AMOUNT,
        "limit_price": _AMOUNT,
        "stop_price": _AMOUNT,
        "take_profit": _AMOUNT,
        "stop_loss": _AMOUNT,
        "tag": _TEXT,
        "comment": _TEXT,
        "time": _TIME,
        "timenow": _TIME,
        "strategy": Schema(type=_OBJ, description="TradingView's {{strategy.*}} placeholders"),
    },
    any_of=[Schema(required=["symbol", "side"]), Schema(required=["ticker", "action"])],
    max_properties=MAX_VALUES,
)
ACCEPTED: Final = Schema(
    type=_OBJ,
    title="Accepted",
    properties={
        "ok": Schema(const=True),
        "id": Schema(type=_STR),
        "duplicate": Schema(type=OpenAPIType.BOOLEAN, description="already stored: a resend"),
    },
    required=["ok", "id", "duplicate"],
)
REFUSED: Final = Schema(
    type=_OBJ,
    title="Refused",
    properties={
        "ok": Schema(const=False),
        "error": Schema(type=_STR, min_length=1, description="why, for a person"),
        "errors": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(
                type=_OBJ,
                properties={"field": Schema(type=_STR), "reason": Schema(type=_STR)},
                required=["field", "reason"],
            ),
            description="422: each invalid field and why",
        ),
    },
    required=["ok", "error"],
)
# Inline, not under components: Litestar rebuilds `components.schemas` from its own registry.
_SCHEMAS: Final = {"Alert": ALERT, "Accepted": ACCEPTED, "Refused": REFUSED}

_REFUSALS: Final = {
    "401": "missing or wrong secret, or signature",
    "403": "source address not allowed, or client certificate missing or not TradingView's",
    "408": "body not received within ALERTBRIDGE_BODY_TIMEOUT",
    "413": "body over ALERTBRIDGE_MAX_BODY_BYTES",
    "431": "request line and headers over ALERTBRIDGE_MAX_HEADER_BYTES",
    "422": "not a JSON object, too deep or too large, or invalid fields (see `errors`)",
    "429": "too many requests from this address or for this account; see Retry-After",
    "503": "JetStream unavailable or slow: nothing stored, retry",
}


def _json(name: str) -> dict[str, OpenAPIMediaType]:
    return {"application/json": OpenAPIMediaType(schema=_SCHEMAS[name])}


def _response(status: str, description: str) -> OpenAPIResponse:
    headers: dict[str, OpenAPIHeader | Reference] | None = None
    if status == "429":
        retry = OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER, minimum=1), required=True)
        headers = {"Retry-After": retry}
    return OpenAPIResponse(description=description, content=_json("Refused"), headers=headers)


RESPONSES: Final = {
    "200": OpenAPIResponse(
        description="stored in JetStream (duplicate: it already was)", content=_json("Accepted")
    ),
    **{status: _response(status, why) for status, why in _REFUSALS.items()},
}
SIGNATURE_HEADERS: Final = [
    Parameter(
        name="X-Signature",
        param_in="header",
        schema=Schema(type=_STR, pattern="^sha256=[0-9a-f]{64}$"),
        description="HMAC-SHA256(key, X-Timestamp + '.' + body), for senders that can sign",
    ),
    Parameter(
        name="X-Timestamp",
        param_in="header",
        schema=Schema(type=_STR, pattern="^[0-9]{1,12}$"),
        description="unix seconds; must be within ALERTBRIDGE_HMAC_WINDOW of now",
    ),
]


def _operation(summary: str, parameters: list[Parameter]) -> Operation:
    return Operation(
        summary=summary,
        operation_id=summary.replace(" ", "_"),
        parameters=[*parameters, *SIGNATURE_HEADERS],
        request_body=RequestBody(content=_json("Alert"), required=True),
        responses=dict(RESPONSES),
    )


def openapi_document() -> dict[str, Any]:
    """The document served at /schema/openapi.json (JSON only: no UI is served)."""
    secret = Parameter(
        name="secret",
        param_in="path",
        required=True,
        schema=Schema(type=_STR, min_length=1),
        description="the webhook secret as the last path segment (TradingView's URL)",
    )
    document = OpenAPI(
        info=Info(
            title="alertbridge ingress",
            version="1",
            description="TradingView webhooks in; see docs/security.md for the checks.",
        ),
        servers=[Server(url="/")],  # (OpenAPI's own default for it is broken in Litestar 2.25)
        paths={
            "/webhook": PathItem(post=_operation("post alert", [])),
            "/webhook/{secret}": PathItem(post=_operation("post alert with path secret", [secret])),
        },
    )
    return document.to_schema()
