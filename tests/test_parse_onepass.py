"""The one-pass path (ingress.onepass) accepts exactly what the general path accepts, as
the same alert and secret, and leaves everything else to it; the usual bodies take it.

Hypothesis prints the falsifying example and a `@reproduce_failure` blob on failure.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.messages import Alert
from ingress.onepass import fast_alert, read_body
from ingress.parse import ALIASES, SECRET_KEYS, InvalidAlertError, decode_body, pop_secret, to_alert
from ingress.redact import REDACTED, Redactor
from ops.platform.settings import Secret

RECEIVED = datetime(2025, 1, 15, 14, 30, 2, tzinfo=UTC)
PROPERTIES = settings(
    max_examples=400, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
TOP_NAMES = sorted({name for names in ALIASES.values() for name in names if "." not in name})


def general(body: bytes) -> tuple[Alert, str | None] | None:
    """The general path's alert and secret (no configured secret to redact); None: refused."""
    try:
        payload = decode_body(body)
        secret = pop_secret(payload)
        return to_alert(payload, received_at=RECEIVED), secret
    except InvalidAlertError:
        return None


def one_pass(body: bytes) -> tuple[Alert, str | None] | None:
    fast = fast_alert(body, received_at=RECEIVED)
    return None if fast is None else (fast.alert, fast.secret)


# Values near the edges of what each field takes: valid, invalid, and the lax conversions.
words = st.sampled_from(
    ["buy", " Long ", "SELL", "close", "exit", "flat", "market", "Limit", "stop", "hold", "",
     "NASDAQ:AAPL", " AAPL", "AAPL ", "A\tB", "a\x00b", REDACTED, "null", "1", "1.5", "-2",
     "1e3", "inf", "nan", "2025-01-15T14:30:01Z", "2025-01-15T14:30:01", "1700000000",
     "x" * 65, "x" * 300]
)  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**66), max_value=2**66)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 1, 2.5, 1e15, 1_700_000_000, 1_700_000_000_000])
    | words
    | st.text(max_size=12)
)
values = scalars | st.lists(scalars, max_size=2) | st.dictionaries(st.text(max_size=4), scalars)
# A symbol and a side under one of their names, mostly valid, and any other known names.
usual = st.tuples(
    st.sampled_from(["symbol", "ticker"]),
    st.sampled_from(["AAPL", "NASDAQ:AAPL"]) | words,
    st.sampled_from(["side", "action", "order_action"]),
    st.sampled_from(["buy", "sell", "close"]) | words,
    st.dictionaries(st.sampled_from([*TOP_NAMES, *SECRET_KEYS]), scalars, max_size=6),
).map(lambda t: {t[0]: t[1], t[2]: t[3], **t[4]})
anything = st.dictionaries(
    st.sampled_from([*TOP_NAMES, *SECRET_KEYS, "strategy", "market_position", "Secret", "x"])
    | st.text(max_size=6),
    values,
    max_size=8,
)


@PROPERTIES
@given(usual | anything)
def test_one_pass_accepts_only_what_the_general_path_does_and_the_same(
    fields: dict[str, Any],
) -> None:
    body = json.dumps(fields).encode()
    fast = one_pass(body)
    if fast is not None:
        assert fast == general(body)


# What TradingView templates send: known names only, one per field, valid values.
templates = st.fixed_dictionaries(
    {"symbol": st.sampled_from(["NASDAQ:AAPL", "BTCUSDT"]),
     "action": st.sampled_from(["buy", "Sell", " short "])},
    optional={"id": st.sampled_from(["a-1", 7]), "qty": st.sampled_from([1, "2.5", 0.1]),
              "secret": st.just("s3cret-s3cret"), "account": st.just("main"),
              "type": st.sampled_from(["market", "LIMIT"]), "limit": st.just(101.5),
              "time": st.sampled_from([1_700_000_000, "2025-01-15T14:30:01Z"]),
              "comment": st.just("from TradingView")},
)  # fmt: skip


@PROPERTIES
@given(templates)
def test_the_usual_bodies_take_the_one_pass(fields: dict[str, Any]) -> None:
    if fields.get("type") == "LIMIT" and "limit" not in fields:
        fields["limit"] = 99.0  # else both paths refuse it
    body = json.dumps(fields).encode()
    fast = one_pass(body)
    assert fast is not None
    assert fast == general(body)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"symbol":"A","side":"buy","exchange":"X"}', "extras keep an unknown key"),
        (b'{"symbol":"A","ticker":"B","side":"buy"}', "the second name stays in extras"),
        (b'{"symbol":"A","side":"buy","qty":null}', "null is absent, not a value"),
        (b'{"symbol":"A","strategy":{"order_action":"buy"}}', "a nested name"),
        (b'{"symbol":"A","side":"buy","market_position":"flat"}', "an exit to flat"),
        (b'{"tv_instrument":"A","action":"enter_long","bot_uuid":"u"}', "3Commas's body"),
        (b'{"symbol":"A","side":"buy","Secret":"s"}', "a secret key in another case"),
        (b'{"symbol":"A","side":"buy","secret":5}', "a secret that is no string"),
        (b'{"symbol":"A","side":"hold"}', "a refusal: the general path says why"),
        (b'{"symbol":" A","side":"buy"}', "a refusal: padded"),
        (b'{"symbol":"[redacted]","side":"buy"}', "a refusal: a secret's place holder"),
        (b'{"symbol":"A","side":"buy","type":"limit"}', "a refusal: no limit price"),
        (b'{"symbol":"A","side":"buy","time":true}', "a refusal: no time"),
        (b'{"symbol":"A","side":"buy"', "not JSON"),
        (b'["symbol"]', "not an object"),
    ],
)
def test_what_the_one_pass_leaves_to_the_general_path(body: bytes, why: str) -> None:
    assert fast_alert(body, received_at=RECEIVED) is None, why


def test_a_body_without_id_is_named_as_the_general_path_names_it() -> None:
    body = b'{"secret":"s","passphrase":"p","ticker":"BTCUSDT","action":"buy","qty":"1"}'
    fast = fast_alert(body, received_at=RECEIVED)
    assert fast is not None and fast.payload == {"ticker": "BTCUSDT", "action": "buy", "qty": "1"}
    assert (fast.alert, fast.secret) == general(body)
    assert fast.alert.quantity == 1.0 and fast.secret == "s"


def test_a_repeated_key_reads_as_the_general_path_reads_it() -> None:
    body = b'{"symbol":"A","symbol":"B","side":"buy","side":"sell"}'
    assert one_pass(body) in (None, general(body))
    assert general(body) is not None and general(body)[0].symbol == "B"  # type: ignore[index]


def test_a_body_that_may_hold_a_configured_secret_takes_the_general_path() -> None:
    """read_body: the one pass cannot redact, so a body with a secret beyond its own
    (here pasted into the comment) is cleaned by the general path."""
    redactor = Redactor([Secret("s3cret-s3cret"), Secret("other-account-key")])
    mine = b'{"secret":"s3cret-s3cret","id":"r-1","symbol":"A","side":"buy"}'
    read = read_body(mine, received_at=RECEIVED, redactor=redactor)
    assert read.alert is not None and read.secret == "s3cret-s3cret" and read.payload is None
    leaky = b'{"secret":"s3cret-s3cret","id":"r-2","symbol":"A","side":"buy",' \
            b'"comment":"other-account-key"}'  # fmt: skip
    read = read_body(leaky, received_at=RECEIVED, redactor=redactor)
    assert read.alert is None and read.payload is not None
    assert read.payload["comment"] == "other-account-key"  # redacted next, once authenticated
    assert redactor.clean(read.payload, leaky, read.secret)["comment"] == REDACTED


def test_read_body_refuses_what_is_no_json_object() -> None:
    with pytest.raises(InvalidAlertError, match="a JSON object is required"):
        read_body(b"[1]", received_at=RECEIVED, redactor=Redactor([]))
