"""Property tests of the webhook parser: whatever the bytes, the answer is an `Alert` or
an `InvalidAlertError` with reasons (never another exception, so never a 500), and a
valid body comes back out of the stream encoding as the alert it described.

Hypothesis prints the falsifying example and a `@reproduce_failure` blob on failure.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.messages import Alert, alert_decoder, alert_encoder
from contracts.subjects import alert_subject
from ingress.parse import (
    ALIASES,
    MAX_DEPTH,
    SECRET_KEYS,
    SIDES,
    InvalidAlertError,
    decode_body,
    pop_secret,
    to_alert,
)

RECEIVED = datetime(2025, 1, 15, 14, 30, 2, tzinfo=UTC)
PROPERTIES = settings(
    max_examples=300, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
# Field names the parser looks at, so that random objects reach its conversions.
known_keys = st.sampled_from(
    sorted(
        {name.partition(".")[0] for names in ALIASES.values() for name in names} | set(SECRET_KEYS)
    )
)
objects = st.dictionaries(known_keys | st.text(max_size=8), json_values, max_size=12)


def ingest(body: bytes) -> Alert:
    """What the ingress does with a body, up to the bytes it publishes and their subject."""
    payload = decode_body(body)
    pop_secret(payload)
    alert = to_alert(payload, received_at=RECEIVED)
    alert_encoder.encode(alert)
    alert_subject(alert.account, alert.symbol)
    return alert


def outcome(body: bytes) -> Alert | InvalidAlertError:
    try:
        return ingest(body)
    except InvalidAlertError as exc:
        assert exc.errors, "an InvalidAlertError always says why"
        return exc


@settings(PROPERTIES, max_examples=2000)
@given(st.binary(max_size=512))
def test_any_bytes_are_an_alert_or_reasons(body: bytes) -> None:
    outcome(body)


@PROPERTIES
@given(objects)
def test_any_json_object_is_an_alert_or_reasons(payload: dict[str, Any]) -> None:
    outcome(json.dumps(payload).encode())


@PROPERTIES
@given(objects, st.data())
def test_mangled_json_is_an_alert_or_reasons(payload: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(json.dumps(payload).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    outcome(bytes(raw))


@PROPERTIES
@given(st.integers(1, 3 * MAX_DEPTH), st.sampled_from(["[", '{"a":']))
def test_nesting_is_refused_past_the_limit(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    inner = opener * (depth - 1) + "1" + closer * (depth - 1)  # levels 2 .. depth
    result = outcome(f'{{"symbol":"X","side":"buy","x":{inner}}}'.encode())
    assert isinstance(result, Alert) == (depth <= MAX_DEPTH)  # the outer object is level 1


names = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x7f").filter(lambda c: c >= " "),
    min_size=1,
    max_size=64,
).filter(lambda name: name == name.strip())  # blank or padded names are refused (test_parse_fields)
amounts = st.floats(min_value=1e-9, max_value=1e14, allow_nan=False, allow_infinity=False)


@PROPERTIES
@given(
    symbol=names,
    account=names,
    side=st.sampled_from(sorted(SIDES)),
    quantity=amounts,
    price=amounts | st.none(),
    tag=st.text(max_size=256) | st.none(),
    extras=st.dictionaries(
        st.text(min_size=1, max_size=8).map(lambda k: "x_" + k), json_values, max_size=5
    ),
    secret=st.text(min_size=8, max_size=40),
)
def test_valid_bodies_round_trip(
    symbol: str,
    account: str,
    side: str,
    quantity: float,
    price: float | None,
    tag: str | None,
    extras: dict[str, Any],
    secret: str,
) -> None:
    fields: dict[str, Any] = {"symbol": symbol, "account": account, "side": side, "qty": quantity}
    fields |= {k: v for k, v in {"price": price, "tag": tag}.items() if v is not None}
    body = json.dumps({"secret": secret, **fields, **extras}).encode()
    alert = ingest(body)
    assert (alert.symbol, alert.account, alert.side) == (symbol, account, SIDES[side])
    assert alert.quantity == quantity and alert.price == price and alert.tag == tag
    assert alert.extras == extras
    assert "secret" not in alert.extras
    # The stored bytes decode to the same alert, and the id is the same for a resend.
    assert alert_decoder.decode(alert_encoder.encode(alert)) == alert
    assert ingest(body).id == alert.id
    assert all(math.isfinite(v) for v in (alert.quantity, alert.price or 1.0))
