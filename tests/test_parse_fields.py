"""Webhook bodies → `Alert`: field-level errors (each reported on its field, several at
once), amounts, order types, times, side aliases and exits, names and ids."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ingress.parse import to_alert
from tests.parse_support import _alert, _errors, _fields, _reason

# --- field-level errors ----------------------------------------------------------


def test_missing_symbol_and_side_are_reported_together() -> None:
    errors = _errors(qty=1)
    assert _fields(errors) == ["symbol", "side"]
    assert "ticker" in _reason(errors, "symbol")
    assert "action" in _reason(errors, "side")


def test_bad_side_lists_the_allowed_values() -> None:
    reason = _reason(_errors(symbol="AAPL", side="hold"), "side")
    for allowed in ("buy", "sell", "close", "long", "short", "exit", "flat"):
        assert allowed in reason
    # The value sent is not repeated: a secret pasted into the wrong field must not come back.
    assert "hold" not in reason


@pytest.mark.parametrize("quantity", [0, -1, -0.5, "0", "-3", "inf", "Infinity", "nan", 1e16])
def test_bad_quantities_are_refused(quantity: object) -> None:
    assert _fields(_errors(symbol="AAPL", side="buy", quantity=quantity)) == ["quantity"]


@pytest.mark.parametrize(("raw", "expected"), [("10", 10.0), ("0.5", 0.5), (3, 3.0), (2.5, 2.5)])
def test_numeric_strings_and_numbers_are_accepted(raw: object, expected: float) -> None:
    assert _alert(symbol="AAPL", side="buy", qty=raw).quantity == expected


def test_limit_order_without_limit_price_is_refused() -> None:
    errors = _errors(symbol="AAPL", side="buy", order_type="limit")
    assert _fields(errors) == ["limit_price"]


def test_stop_order_without_stop_price_is_refused() -> None:
    assert _fields(_errors(symbol="AAPL", side="buy", type="stop")) == ["stop_price"]


def test_limit_price_alone_implies_a_limit_order() -> None:
    alert = _alert(symbol="AAPL", side="buy", limit=101.5)
    assert alert.order_type == "limit"
    assert alert.limit_price == 101.5


def test_bad_order_type_is_refused() -> None:
    assert _fields(_errors(symbol="AAPL", side="buy", order_type="iceberg")) == ["order_type"]


@pytest.mark.parametrize("value", ["yesterday", "2025-13-45T99:00:00Z", True, [2025]])
def test_bad_time_is_an_error_on_time(value: object) -> None:
    assert _fields(_errors(symbol="AAPL", side="buy", time=value)) == ["time"]


@pytest.mark.parametrize(
    "value",
    [1736951100, 1736951100.0, 1736951100000, "2025-01-15T14:25:00Z", "2025-01-15T15:25:00+01:00"],
)
def test_epoch_seconds_milliseconds_and_rfc3339_are_accepted(value: object) -> None:
    alert = _alert(symbol="AAPL", side="buy", time=value, timenow=value)
    expected = datetime(2025, 1, 15, 14, 25, tzinfo=UTC)
    assert alert.time == expected
    assert alert.timenow == expected
    assert alert.time is not None
    assert alert.time.tzinfo is not None


def test_naive_time_is_taken_as_utc() -> None:
    alert = _alert(symbol="AAPL", side="buy", time="2025-01-15T14:25:00")
    assert alert.time == datetime(2025, 1, 15, 14, 25, tzinfo=UTC)


def test_symbol_beats_ticker() -> None:
    alert = _alert(ticker="OTHER", symbol="AAPL", side="buy")
    assert alert.symbol == "AAPL"
    # The losing alias is not consumed: it stays in extras for the audit trail.
    assert alert.extras == {"ticker": "OTHER"}


def test_top_level_side_beats_nested_strategy_action() -> None:
    alert = _alert(symbol="AAPL", action="sell", strategy={"order_action": "buy"})
    assert alert.side == "sell"


@pytest.mark.parametrize(
    ("raw", "side"),
    [
        ("buy", "buy"),
        ("long", "buy"),
        ("sell", "sell"),
        ("short", "sell"),
        ("close", "close"),
        ("exit", "close"),
        ("flat", "close"),
        (" Long ", "buy"),
        ("SHORT", "sell"),
    ],
)
def test_side_aliases(raw: str, side: str) -> None:
    assert _alert(symbol="AAPL", side=raw).side == side


@pytest.mark.parametrize(
    "symbol", ["AA\x00PL", "AAPL\n", "AA\nPL", "\tAAPL", "AAPL\x7f", "AA\x1bPL"]
)
def test_control_characters_in_symbol_are_refused(symbol: str) -> None:
    assert _fields(_errors(symbol=symbol, side="buy")) == ["symbol"]


@pytest.mark.parametrize(
    ("field", "name", "reason"),
    [
        ("symbol", " ", "must not be blank"),
        ("symbol", "\u00a0\u2003", "must not be blank"),
        ("symbol", " AAPL", "must not begin or end with whitespace"),
        ("symbol", "AAPL\u00a0", "must not begin or end with whitespace"),
        ("account", " ", "must not be blank"),
        ("account", "main ", "must not begin or end with whitespace"),
    ],
)
def test_blank_or_padded_names_are_refused(field: str, name: str, reason: str) -> None:
    errors = _errors(**{"symbol": "AAPL", "side": "buy", field: name})
    assert [(e.field, e.reason) for e in errors] == [(field, reason)]


def test_inner_spaces_in_a_name_stay_allowed() -> None:
    alert = _alert(symbol="ES1! Short", side="buy", account="my main")
    assert (alert.symbol, alert.account) == ("ES1! Short", "my main")


@pytest.mark.parametrize("alert_id_", ["id\x00", "id\n", "a\r\nb", "\x1b[31mred"])
def test_control_characters_in_id_are_refused(alert_id_: str) -> None:
    assert _fields(_errors(id=alert_id_, symbol="AAPL", side="buy")) == ["id"]


def test_over_long_symbol_is_refused() -> None:
    assert _fields(_errors(symbol="A" * 65, side="buy")) == ["symbol"]


def test_several_bad_fields_are_reported_at_once() -> None:
    errors = _errors(symbol="AAPL", side="hold", qty=-1, time="later")
    assert sorted(_fields(errors)) == ["quantity", "side", "time"]


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "sell", "market_position": "flat"},
        {"action": "buy", "market_position": "FLAT"},
        {"strategy": {"order_action": "sell", "market_position": "flat"}},
    ],
)
def test_an_exit_to_flat_closes_the_position(fields: dict[str, Any]) -> None:
    alert = to_alert({"ticker": "ES1!", **fields}, received_at=datetime.now(UTC))
    assert alert.side == "close"


def test_a_reversal_is_not_a_close() -> None:
    body = {"ticker": "ES1!", "action": "sell", "market_position": "short", "contracts": 2}
    assert to_alert(body, received_at=datetime.now(UTC)).side == "sell"


@pytest.mark.parametrize("text", ["null", "NULL", "None", ""])
def test_a_null_looking_string_is_not_an_absent_amount(text: str) -> None:
    assert _fields(_errors(symbol="AAPL", side="buy", qty=text)) == ["quantity"]
    limit = _errors(symbol="AAPL", side="buy", type="limit", limit=text)
    assert _fields(limit) == ["limit_price", "limit_price"]  # not a number; then missing


def test_a_json_null_alias_counts_as_absent() -> None:
    """`{{strategy.order.price}}`-style fields can render as null: the next alias counts."""
    alert = _alert(symbol="AAPL", side="buy", price=None, close=101.5)
    assert alert.price == 101.5
