"""`ingress.parse` at its edges: the exact 422 reasons, the shape limits, the inferences.

A sender reads the reasons to fix a template, so they are pinned word for word. The
shape limits are checked on both sides of each edge. Each case here is one that a
mutation test found unguarded (docs/testing.md).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from ingress.parse import (
    MAX_DEPTH,
    MAX_STRING,
    MAX_VALUES,
    InvalidAlertError,
    alert_id,
    decode_body,
    to_alert,
)

RECEIVED = datetime(2025, 1, 15, 14, 30, 2, tzinfo=UTC)
SIDES = "must be one of buy, close, exit, flat, long, sell, short"
RFC3339 = "must be an RFC 3339 time such as 2025-01-15T14:30:01Z"
A_STRING = "got a string that is not one (not repeated here)"  # never the value: it may be a secret
ORDER_TYPES = "must be one of limit, market, stop"
# A string this long makes any body long enough for the walk over its shape.
PAD = "x" * MAX_STRING


def _errors(**fields: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidAlertError) as caught:
        to_alert({"symbol": "AAPL", "side": "buy", **fields}, received_at=RECEIVED)
    return [(error.field, error.reason) for error in caught.value.errors]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"side": 5}, ("side", f"{SIDES}; got a JSON number")),
        ({"side": {}}, ("side", f"{SIDES}; got a JSON object")),
        ({"side": "sideways"}, ("side", f"{SIDES}; {A_STRING}")),
        ({"order_type": False}, ("order_type", f"{ORDER_TYPES}; got a JSON boolean")),
        ({"time": True}, ("time", "must be an RFC 3339 time or epoch seconds/milliseconds")),
        ({"time": 1e30}, ("time", "epoch time out of range")),
        ({"time": "soon"}, ("time", f"{RFC3339}; {A_STRING}")),
        ({"timenow": [1]}, ("timenow", f"{RFC3339}; got a JSON array")),
        ({"time": None, "timenow": None, "tag": 1}, ("tag", "Expected `str`, got `int`")),
        ({"quantity": "abc"}, ("quantity", "Expected `float`, got `str`")),
        ({"quantity": -1}, ("quantity", "Expected `float` > 0.0")),
        ({"order_type": "limit"}, ("limit_price", "required for a limit order")),
        ({"order_type": "stop"}, ("stop_price", "required for a stop order")),
    ],
)  # fmt: skip
def test_each_refusal_names_its_field_and_reason(
    fields: dict[str, Any], expected: tuple[str, str]
) -> None:
    assert _errors(**fields) == [expected]


def test_missing_names_list_their_aliases_and_the_message_joins_them() -> None:
    with pytest.raises(InvalidAlertError) as caught:
        to_alert({}, received_at=RECEIVED)
    assert str(caught.value) == (
        "symbol: required (as one of: symbol / ticker); "
        "side: required (as one of: side / action / order_action / strategy.order_action)"
    )


def test_one_bad_field_does_not_make_a_good_numeric_string_bad() -> None:
    # The one-by-one pass after a failed conversion stays as lax as the first.
    assert _errors(quantity="5", price="bad") == [("price", "Expected `float`, got `str`")]


def test_a_stop_price_alone_implies_a_stop_order() -> None:
    alert = to_alert({"symbol": "AAPL", "side": "buy", "stop_price": 180}, received_at=RECEIVED)
    assert (alert.order_type, alert.stop_price) == ("stop", 180.0)
    alert = to_alert(
        {"symbol": "AAPL", "side": "sell", "order_type": "stop", "stop_price": "179.5"},
        received_at=RECEIVED,
    )
    assert (alert.order_type, alert.stop_price) == ("stop", 179.5)


def test_names_are_checked_when_the_body_has_an_id() -> None:
    assert _errors(id="a-1", symbol=" AAPL") == [
        ("symbol", "must not begin or end with whitespace")
    ]
    assert _errors(id="a-1", account=" ") == [("account", "must not be blank")]


def test_an_id_is_kept_verbatim_inner_and_outer_spaces_too() -> None:
    alert = to_alert({"id": " a 1 ", "symbol": "AAPL", "side": "buy"}, received_at=RECEIVED)
    assert alert.id == " a 1 "


def test_the_id_of_a_body_without_one_is_its_canonical_hash() -> None:
    # Stable across versions: a resend across an upgrade must keep its id.
    canonical = b'{"side":"buy","symbol":"AAPL"}'
    expected = hashlib.sha256(canonical).hexdigest()[:32]
    assert alert_id({"symbol": "AAPL", "side": "buy"}) == expected
    assert to_alert({"symbol": "AAPL", "side": "buy"}, received_at=RECEIVED).id == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (100_000_000_000, datetime(5138, 11, 16, 9, 46, 40, tzinfo=UTC)),  # still seconds
        (100_000_000_001, datetime(1973, 3, 3, 9, 46, 40, 1000, tzinfo=UTC)),  # milliseconds
    ],
)
def test_epoch_seconds_end_at_1e11(value: int, expected: datetime) -> None:
    alert = to_alert({"symbol": "AAPL", "side": "buy", "time": value}, received_at=RECEIVED)
    assert alert.time == expected


# --- the shape of a body: both sides of each limit ----------------------------------


def _body(value: dict[str, Any]) -> bytes:
    return msgspec.json.encode(value)


def _nested(levels: int, container: str) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value} if container == "object" else [value]
    return value


@pytest.mark.parametrize("container", ["object", "array"])
def test_a_body_nested_exactly_to_the_limit_is_accepted(container: str) -> None:
    body = _body({"pad": PAD, "deep": _nested(MAX_DEPTH - 1, container)})
    assert decode_body(body)["pad"] == PAD


@pytest.mark.parametrize("container", ["object", "array"])
def test_a_body_nested_one_deeper_is_refused(container: str) -> None:
    body = _body({"pad": PAD, "deep": _nested(MAX_DEPTH, container)})
    with pytest.raises(InvalidAlertError) as caught:
        decode_body(body)
    assert [(e.field, e.reason) for e in caught.value.errors] == [
        ("body", f"nested deeper than {MAX_DEPTH} levels")
    ]


def test_exactly_the_most_values_are_accepted() -> None:
    # The object, the pad, the list and its items: long enough to be walked.
    body = _body({"pad": PAD, "items": [0] * (MAX_VALUES - 3)})
    assert len(decode_body(body)["items"]) == MAX_VALUES - 3


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"a":"\xff"}', "a JSON object is required: a string is not valid UTF-8"),
        (b"[1]", "a JSON object is required, not a JSON value"),
        # Deep enough for the interpreter's recursion limit, not only the walk's.
        (b"[" * 100_000 + b"]" * 100_000, f"nested deeper than {MAX_DEPTH} levels"),
    ],
)
def test_a_body_that_is_no_object_is_refused_with_its_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidAlertError) as caught:
        decode_body(body)
    assert [(e.field, e.reason) for e in caught.value.errors] == [("body", reason)]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"items": [0] * (MAX_VALUES - 1)}, f"more than {MAX_VALUES} values"),
        ({"s": PAD + "x"}, f"a string longer than {MAX_STRING} characters"),
        ({PAD + "x": 1}, f"a key longer than {MAX_STRING} characters"),
        # What is still to be walked is not forgotten when an object or a list is opened.
        ({"s": PAD + "x", "o": {"a": 1}}, f"a string longer than {MAX_STRING} characters"),
        ({"s": PAD + "x", "l": [1]}, f"a string longer than {MAX_STRING} characters"),
    ],
)
def test_past_a_limit_the_body_is_refused(value: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidAlertError) as caught:
        decode_body(_body(value))
    assert [(e.field, e.reason) for e in caught.value.errors] == [("body", reason)]


def test_strings_and_keys_of_the_longest_length_are_accepted() -> None:
    assert decode_body(_body({PAD: PAD})) == {PAD: PAD}
