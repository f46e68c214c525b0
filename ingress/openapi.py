"""The OpenAPI document of the webhook, served at `/schema/openapi.json`.

It is generated from what the parser and the answers are made of, so the two cannot
disagree:

  each field's names        ingress.parse.ALIASES ("a.b": `b` inside the object `a`),
                            the required ones ingress.parse.REQUIRED
  each field's schema       msgspec's JSON Schema of ingress.parse.FIELD_TYPES, or the
                            keys of SIDES / ORDER_TYPES
  the shape of the body     MAX_DEPTH, MAX_VALUES, MAX_STRING; the body cap (settings)
  the answers               msgspec's JSON Schema of ingress.answers' Structs

Litestar cannot write it: its own document leaves ASGI routes out (the webhook is
one, see ingress.app), and a handler that takes the raw body (the secret must go
before anything reads it; TradingView's Content-Type says nothing reliable) has no
type it could describe. The paths, signature headers and statuses are stated here
(tests/test_openapi.py checks the statuses against the code, and the rest against
the parser); tests/test_fuzz.py fuzzes the ingress from the document.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from typing import Any, Final

import msgspec
from litestar.openapi.spec import (
    Info,
    OpenAPI,
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

from ingress.answers import Accepted, Refused
from ingress.auth import MAX_TIMESTAMP_DIGITS, SIGNATURE_SCHEME
from ingress.parse import (
    ALIASES,
    FIELD_TYPES,
    MAX_DEPTH,
    MAX_STRING,
    MAX_VALUES,
    ORDER_TYPES,
    REQUIRED,
    SECRET_KEYS,
    SIDES,
)

JsonSchema = dict[str, Any]  # one JSON Schema, as msgspec.json.schema writes it

_REF: Final = "#/components/schemas/{name}"
_CHOICES: Final = {"side": SIDES, "order_type": ORDER_TYPES}  # as parse._convert reads them
_TIME: Final[JsonSchema] = {  # parse._timestamp: msgspec's datetime, or a number
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
    "description": "RFC 3339, or epoch seconds or milliseconds",
}
_TIMES: Final = ("time", "timenow")
_NOTES: Final = {  # prose only: what the types cannot say (parse._check_names, ...)
    "id": "the alert id (dedup key); without it, a hash of the body",
    "account": "not blank, no leading or trailing whitespace",
    "symbol": "not blank, no leading or trailing whitespace",
    "side": "case-insensitive",
    "order_type": "case-insensitive",
}
_SECRET: Final[JsonSchema] = {
    "type": "string",
    "maxLength": MAX_STRING,
    "description": "the webhook secret (never stored or echoed)",
}
# The body itself is one of the values, so no container can hold MAX_VALUES of them.
_PER_CONTAINER: Final = MAX_VALUES - 1
LIMITS: Final = "x-alertbridge-limits"  # the Alert schema's statement of the limits

_REFUSALS: Final = {
    "401": "missing or wrong secret, or signature",
    "403": "source address not allowed, or client certificate missing or not TradingView's",
    "408": "body not received within ALERTBRIDGE_BODY_TIMEOUT",
    "413": "body over {max_body} bytes (ALERTBRIDGE_MAX_BODY_BYTES)",
    "431": "request line and headers over ALERTBRIDGE_MAX_HEADER_BYTES",
    "422": "not a JSON object, too deep or too large, or invalid fields (see `errors`)",
    "429": "too many requests from this address or for this account; see Retry-After",
    "503": "JetStream unavailable or slow: nothing stored, retry",
}


def openapi_document(*, max_body_bytes: int) -> dict[str, Any]:
    """The document served at /schema/openapi.json (JSON only: no UI is served)."""
    secret = Parameter(
        name="secret",
        param_in="path",
        required=True,
        schema=Schema(type=OpenAPIType.STRING, min_length=1),
        description="the webhook secret as the last path segment (TradingView's URL)",
    )
    responses = _responses(max_body_bytes)
    document = OpenAPI(
        info=Info(
            title="alertbridge ingress",
            version="1",
            description="TradingView webhooks in; see docs/security.md for the checks.",
        ),
        servers=[Server(url="/")],  # (OpenAPI's own default for it is broken in Litestar 2.25)
        paths={
            "/webhook": PathItem(post=_operation("post alert", [], responses)),
            "/webhook/{secret}": PathItem(
                post=_operation("post alert with path secret", [secret], responses)
            ),
        },
    ).to_schema()
    document["components"] = {"schemas": _components(max_body_bytes)}
    return document


def _components(max_body_bytes: int) -> dict[str, JsonSchema]:
    """The Alert, the answers, and the values kept in `extras` at each depth."""
    types = [*FIELD_TYPES.values(), Accepted, Refused]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    fields = dict(zip(FIELD_TYPES, schemas[: len(FIELD_TYPES)], strict=True))
    fields |= {field: {"type": "string", "enum": sorted(t)} for field, t in _CHOICES.items()}
    fields |= dict.fromkeys(_TIMES, _TIME)
    if missing := set(ALIASES) - set(fields):  # a new field: say how to document it
        raise LookupError(f"no schema for the field(s) {sorted(missing)}")
    values = {f"Value{depth}": _value(depth) for depth in range(2, MAX_DEPTH + 2)}
    every = {"Alert": _alert(fields, max_body_bytes), **components, **values}
    return {name: _ecma(schema) for name, schema in every.items()}


def _alert(fields: dict[str, JsonSchema], max_body_bytes: int) -> JsonSchema:
    """The request body: every name of every field, each with the field's schema."""
    properties: dict[str, JsonSchema] = dict.fromkeys(SECRET_KEYS, _SECRET)
    nested: dict[str, dict[str, JsonSchema]] = {}
    for field, names in ALIASES.items():
        for rank, name in enumerate(names):
            note = _NOTES.get(field) if rank == 0 else f"another name for {field}"
            schema = {**fields[field], "description": note} if note else fields[field]
            parent, _, child = name.rpartition(".")  # ("", "", name) at the top
            (nested.setdefault(parent, {}) if parent else properties)[child] = schema
    for parent, children in nested.items():
        note = f"TradingView's {{{{{parent}.*}}}} placeholders"
        properties[parent] = {**_object(2), "properties": children, "description": note}
    aliases = "; ".join("/".join(names) for names in ALIASES.values() if len(names) > 1)
    return {
        "title": "Alert",
        "description": (
            "A TradingView alert message. The Content-Type is not relied on: the body is "
            "read as a JSON object. A field may come under any of its names, the first "
            f"present one winning: {aliases}. Every other field is kept as `extras`. "
            f"At most {MAX_DEPTH} levels deep, {MAX_VALUES} values, keys and strings of "
            f"{MAX_STRING} characters, {max_body_bytes} bytes."
        ),
        **_object(1),
        "properties": properties,
        "anyOf": _required(),
        LIMITS: {
            "max_depth": MAX_DEPTH,
            "max_values": MAX_VALUES,
            "max_string": MAX_STRING,
            "max_body_bytes": max_body_bytes,
        },
    }


def _required() -> list[JsonSchema]:
    """Every way to send each REQUIRED field under one of its names."""
    ways = []
    for names in itertools.product(*(ALIASES[field] for field in REQUIRED)):
        top = [name for name in names if "." not in name]
        inner: dict[str, list[str]] = {}
        for parent, _, child in (name.partition(".") for name in names if "." in name):
            inner.setdefault(parent, []).append(child)
        way: JsonSchema = {"required": [*top, *inner]}
        if inner:
            way["properties"] = {parent: {"required": kids} for parent, kids in inner.items()}
        ways.append(way)
    return ways


def _object(depth: int) -> JsonSchema:
    """An object at `depth` (the body is 1) within parse's limits; its other members
    are values one level deeper."""
    return {
        "type": "object",
        "maxProperties": _PER_CONTAINER,
        "propertyNames": {"maxLength": MAX_STRING},
        "additionalProperties": {"$ref": _REF.format(name=f"Value{depth + 1}")},
    }


def _value(depth: int) -> JsonSchema:
    """Any JSON value at `depth` within parse's limits: past MAX_DEPTH, no container."""
    description = f"a JSON value {depth} levels deep (the body is level 1)"
    if depth > MAX_DEPTH:
        scalar = ["string", "number", "boolean", "null"]
        return {"description": description, "type": scalar, "maxLength": MAX_STRING}
    deeper = {"$ref": _REF.format(name=f"Value{depth + 1}")}
    container = {key: value for key, value in _object(depth).items() if key != "type"}
    return {
        "description": description,
        "maxLength": MAX_STRING,
        "maxItems": _PER_CONTAINER,
        "items": deeper,
        **container,
    }


def _ecma(schema: JsonSchema) -> JsonSchema:
    """`schema` with its Python `re` patterns (msgspec's) in ECMA-262, OpenAPI's dialect:
    there `^` and `$` anchor at the ends of the string, as `\\A` and `\\Z` do in Python."""
    out: JsonSchema = {}
    for key, value in schema.items():
        if key == "pattern":
            value = re.sub(r"\\Z$", "$", re.sub(r"^\\A", "^", value))
            if "\\A" in value or "\\Z" in value:
                raise ValueError(f"no ECMA-262 form for the pattern {value!r}")
        elif isinstance(value, dict):
            value = _ecma(value)
        elif isinstance(value, list):
            value = [_ecma(item) if isinstance(item, dict) else item for item in value]
        out[key] = value
    return out


def _json(name: str) -> dict[str, OpenAPIMediaType]:
    return {"application/json": OpenAPIMediaType(schema=Reference(ref=_REF.format(name=name)))}


def _responses(max_body_bytes: int) -> dict[str, OpenAPIResponse | Reference]:
    responses: dict[str, OpenAPIResponse | Reference] = {
        "200": OpenAPIResponse(
            description="stored in JetStream (duplicate: it already was)", content=_json("Accepted")
        )
    }
    for status, why in _REFUSALS.items():
        headers: dict[str, OpenAPIHeader | Reference] | None = None
        if status == "429":
            retry = Schema(type=OpenAPIType.INTEGER, minimum=1)
            headers = {"Retry-After": OpenAPIHeader(schema=retry, required=True)}
        description = why.format(max_body=max_body_bytes)
        responses[status] = OpenAPIResponse(
            description=description, content=_json("Refused"), headers=headers
        )
    return responses


_HEX_DIGEST: Final = hashlib.sha256().digest_size * 2  # ingress.auth signs with HMAC-SHA256
_SIGNATURE_HEADERS: Final = [
    Parameter(
        name="X-Signature",
        param_in="header",
        schema=Schema(
            type=OpenAPIType.STRING,
            pattern=f"^{re.escape(SIGNATURE_SCHEME)}[0-9a-f]{{{_HEX_DIGEST}}}$",
        ),
        description="HMAC-SHA256(key, X-Timestamp + '.' + body), for senders that can sign",
    ),
    Parameter(
        name="X-Timestamp",
        param_in="header",
        schema=Schema(type=OpenAPIType.STRING, pattern=f"^[0-9]{{1,{MAX_TIMESTAMP_DIGITS}}}$"),
        description="unix seconds; must be within ALERTBRIDGE_HMAC_WINDOW of now",
    ),
]


def _operation(
    summary: str, parameters: list[Parameter], responses: dict[str, OpenAPIResponse | Reference]
) -> Operation:
    return Operation(
        summary=summary,
        operation_id=summary.replace(" ", "_"),
        parameters=[*parameters, *_SIGNATURE_HEADERS],
        request_body=RequestBody(content=_json("Alert"), required=True),
        responses=dict(responses),
    )
