"""The webhook's OpenAPI document against the parser, the answers and the code that
answers: it is generated from their definitions (ingress.openapi); these tests guard
the generator. Each compares the document with the parser's own constants and types,
or validates the same bodies with both (jsonschema) and expects the same verdict."""

from __future__ import annotations

import ast
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, get_args, get_origin

import msgspec
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from ingress.answers import accepted, refusal_bytes, refusal_reply, refusal_response
from ingress.openapi import LIMITS, openapi_document
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
    FieldError,
    InvalidAlertError,
    decode_body,
    to_alert,
)

MAX_BODY = 12_345
DOCUMENT = openapi_document(max_body_bytes=MAX_BODY)
SCHEMAS = DOCUMENT["components"]["schemas"]
ALERT = SCHEMAS["Alert"]
EXAMPLES: dict[str, Any] = {"id": "a1", "account": "default", "symbol": "NASDAQ:AAPL",
            "side": "buy", "quantity": 1.5, "price": 101.25, "tag": "t", "comment": "c",
            "time": "2025-01-15T14:30:01Z", "timenow": 1736951401}  # fmt: skip
VALID = {field: EXAMPLES[field] for field in REQUIRED}  # the least a body holds
INGRESS = Path(__file__).parent.parent / "ingress"
# Answers the document leaves out, each for a reason; every other status the code can
# answer must be documented, and every documented one must be answered somewhere.
UNDOCUMENTED = {
    404: "a path the document does not have (/webhook/a/b)",
    405: "a method the document does not have",
    500: "an unexpected error, a bug: tests/test_fuzz.py fails on any 5xx but 503",
}
# The helpers that answer, and where their status is among the positional arguments.
ANSWERING = {
    "refusal_reply": 0,
    "refusal_response": 0,
    "refusal_bytes": 0,
    "RefusedError": 0,
    "_refuse": 1,  # ingress.app's Webhook._refuse(scope, status, ...); serve's is (status, ...)
}


def _validator(name: str) -> Draft202012Validator:
    """A validator for one of the document's schemas, its references resolved."""
    resource = Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:webhook", resource)
    return Draft202012Validator(
        {"$ref": f"urn:webhook#/components/schemas/{name}"}, registry=registry
    )


def _property(name: str) -> dict[str, Any]:
    """The document's schema for one name a field is read under ("a.b": `b` inside `a`)."""
    parent, _, child = name.rpartition(".")
    properties = ALERT["properties"][parent]["properties"] if parent else ALERT["properties"]
    schema: dict[str, Any] = properties[child]
    return {key: value for key, value in schema.items() if key != "description"}


def _expected(field: str) -> dict[str, Any]:
    """A field's schema as the parser defines it."""
    if field == "side":
        return {"type": "string", "enum": sorted(SIDES)}
    if field == "order_type":
        return {"type": "string", "enum": sorted(ORDER_TYPES)}
    # msgspec writes Python's patterns (\A...\Z); OpenAPI's are ECMA-262's (^...$).
    text = json.dumps(msgspec.json.schema(FIELD_TYPES[field]))
    expected: dict[str, Any] = json.loads(text.replace(r'"\\A', '"^').replace(r'\\Z"', '$"'))
    return expected


def test_every_name_of_every_field_is_a_property_with_the_fields_schema() -> None:
    for field, names in ALIASES.items():
        if field not in FIELD_TYPES and field not in ("side", "order_type"):
            continue  # the times: parse._timestamp is code, not a type (see below)
        for name in names:
            assert _property(name) == _expected(field), name
    assert set(ALERT["properties"]["side"]["enum"]) == set(SIDES)
    assert set(ALERT["properties"]["order_type"]["enum"]) == set(ORDER_TYPES)
    for name in ("time", "timenow"):
        assert {"type": "number"} in _property(name)["anyOf"]
    # Nothing else is described: no name the parser does not read.
    every = {name for names in ALIASES.values() for name in names}
    top = {name.partition(".")[0] for name in every} | set(SECRET_KEYS)
    assert set(ALERT["properties"]) == top
    for parent in {name.partition(".")[0] for name in every if "." in name}:
        inner = {n.partition(".")[2] for n in every if n.startswith(f"{parent}.")}
        assert set(ALERT["properties"][parent]["properties"]) == inner


def _samples(kind: Any) -> list[Any]:
    """Values at and around the bounds a field's type declares (msgspec.Meta)."""
    if get_origin(kind) is UnionType:
        return [sample for arm in get_args(kind) for sample in _samples(arm)]
    if get_origin(kind) is not Annotated:
        return [0, 1, -5] if kind is int else ["x"]
    base, meta = get_args(kind)
    if base is str:
        lengths = {meta.min_length or 0, (meta.max_length or 1) - 1, meta.max_length or 1}
        lengths |= {n + 1 for n in lengths} | {n - 1 for n in lengths if n > 0}
        return ["a" * n for n in sorted(lengths)] + ["a\x00b", "a\nb", "\x1f", "a\x7f", "é"]
    assert base is float, kind
    low, high = meta.gt, meta.lt
    assert low is not None and high is not None
    return [low - 1, low, low + 0.5, high - 1, high, high + 1]


def test_the_field_schemas_accept_what_the_parser_accepts() -> None:
    """Every sample is valid to the document exactly when the parser takes it for the
    field. Not compared (the document is stricter or says it in words): numbers sent as
    strings (the parser converts), choices in other cases, padded or blank names."""
    for field, kind in FIELD_TYPES.items():
        for value in _samples(kind):
            try:
                to_alert({**VALID, field: value}, received_at=datetime.now(UTC))
                taken = True
            except InvalidAlertError as exc:
                taken = not [e for e in exc.errors if e.field == field]
            for name in ALIASES[field]:
                valid = Draft202012Validator(_property(name)).is_valid(value)
                assert valid == taken, (name, value)


def test_the_required_fields_are_required_under_any_of_their_names() -> None:
    validator = _validator("Alert")
    for way in ALERT["anyOf"]:
        inner = way.get("properties", {})
        names = {name for name in way["required"] if name not in inner}
        names |= {f"{parent}.{kid}" for parent, kids in inner.items() for kid in kids["required"]}
        named = {field for field, aliases in ALIASES.items() if names & set(aliases)}
        assert named == set(REQUIRED), way
    for field in REQUIRED:  # without it, under any name: refused by both
        body = {name: value for name, value in VALID.items() if name != field}
        assert not validator.is_valid(body), field
        with pytest.raises(InvalidAlertError, match="required"):
            to_alert(body, received_at=datetime.now(UTC))
    ways = 1
    for field in REQUIRED:
        ways *= len(ALIASES[field])
    assert len(ALERT["anyOf"]) == ways


def _nest(levels: int) -> Any:
    """`levels` containers, one inside the other, objects and arrays by turns."""
    value: Any = 0
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


def _both(body: dict[str, Any]) -> tuple[bool, bool]:
    """(the document takes it, the parser takes its shape)."""
    try:
        decode_body(json.dumps(body).encode())
        parsed = True
    except InvalidAlertError:
        parsed = False
    return _validator("Alert").is_valid(body), parsed


def test_the_shape_limits_are_the_parsers() -> None:
    assert ALERT[LIMITS] == {
        "max_depth": MAX_DEPTH,
        "max_values": MAX_VALUES,
        "max_string": MAX_STRING,
        "max_body_bytes": MAX_BODY,
    }
    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1):  # the body itself is level 1
        for body in (
            {**VALID, "extra": _nest(depth - 1)},
            {**VALID, "strategy": {"k": _nest(depth - 2)}},
        ):
            assert _both(body) == (depth <= MAX_DEPTH,) * 2, (depth, body)
    for length in (MAX_STRING, MAX_STRING + 1):
        fits = length <= MAX_STRING
        assert _both({**VALID, "extra": "a" * length}) == (fits, fits)
        assert _both({**VALID, "extra": [{"k": ["a" * length]}]}) == (fits, fits)
        assert _both({**VALID, "k" * length: 1}) == (fits, fits)
        assert _both({**VALID, "secret": "a" * length}) == (fits, fits)
    # A container holds at most MAX_VALUES - 1 (the body is one of the values); the
    # total, which JSON Schema cannot count, is in the LIMITS extension only.
    containers = [ALERT, ALERT["properties"]["strategy"]]
    containers += [SCHEMAS[f"Value{depth}"] for depth in range(2, MAX_DEPTH + 1)]
    for schema in containers:
        assert schema["maxProperties"] == MAX_VALUES - 1
        assert schema["propertyNames"] == {"maxLength": MAX_STRING}
    assert _both({**VALID, "extra": [0] * (MAX_VALUES - 1)}) == (True, False)
    assert _both({**VALID, "extra": [0] * MAX_VALUES}) == (False, False)
    responses = DOCUMENT["paths"]["/webhook"]["post"]["responses"]
    assert f"over {MAX_BODY} bytes" in responses["413"]["description"]


def _answered(path: Path) -> set[int]:
    """The literal statuses `path` passes to the helpers that answer."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if name == "accepted":
            found.add(200)
        position = ANSWERING.get(name or "")
        if position is None:
            continue
        statuses = node.args[: position + 1]  # literals, or expressions holding some
        for leaf in (leaf for status in statuses for leaf in ast.walk(status)):
            if isinstance(leaf, ast.Constant) and type(leaf.value) is int and leaf.value >= 100:
                found.add(leaf.value)
    return found


def test_every_status_the_webhook_answers_is_documented() -> None:
    answered = set().union(*(_answered(path) for path in sorted(INGRESS.glob("*.py"))))
    assert {200, 401, 422, 503} <= answered, "the scan found no answers: helpers renamed?"
    for path in ("/webhook", "/webhook/{secret}"):
        documented = {int(status) for status in DOCUMENT["paths"][path]["post"]["responses"]}
        assert documented == answered - set(UNDOCUMENTED), path
        retry = DOCUMENT["paths"][path]["post"]["responses"]["429"]["headers"]["Retry-After"]
        assert retry["required"] is True


def test_the_answers_are_what_the_document_says() -> None:
    accepted_ = _validator("Accepted")
    refused = _validator("Refused")
    assert accepted_.is_valid(json.loads(accepted("abc", duplicate=False).body))
    assert not refused.is_valid(json.loads(accepted("abc", duplicate=True).body))
    errors = [FieldError("symbol", "required")]
    assert refused.is_valid(json.loads(refusal_reply(422, "invalid alert", errors).body))
    assert refused.is_valid(json.loads(refusal_response(404, "not found").content))
    raw = refusal_bytes(431, "request line and headers over 8192 bytes")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1.1 431 ", head)
    assert refused.is_valid(json.loads(body))
    assert not refused.is_valid({"ok": False, "error": ""})  # a reason is never empty
    assert not accepted_.is_valid({"ok": False, "id": "abc", "duplicate": False})
