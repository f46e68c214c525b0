"""Webhook bodies → `Alert`: the real TradingView samples, secrets, ids, field errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts.messages import Alert
from ingress.parse import (
    SECRET_KEYS,
    FieldError,
    InvalidAlertError,
    alert_id,
    decode_body,
    pop_secret,
    to_alert,
)

SAMPLES = Path(__file__).parent / "samples"
RECEIVED = datetime(2025, 1, 15, 14, 30, 2, tzinfo=UTC)


def _sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def _parse(body: bytes) -> tuple[Alert, str | None]:
    """What the ingress does: decode, remove the secret, normalize."""
    payload = decode_body(body)
    secret = pop_secret(payload)
    return to_alert(payload, received_at=RECEIVED), secret


def _alert(**fields: Any) -> Alert:
    return to_alert(dict(fields), received_at=RECEIVED)


def _errors(**fields: Any) -> list[FieldError]:
    with pytest.raises(InvalidAlertError) as info:
        to_alert(dict(fields), received_at=RECEIVED)
    assert info.value.errors, "an InvalidAlertError must say why"
    return info.value.errors


def _fields(errors: list[FieldError]) -> list[str]:
    return [e.field for e in errors]


def _reason(errors: list[FieldError], field: str) -> str:
    reasons = [e.reason for e in errors if e.field == field]
    assert reasons, f"no error on {field!r}: {errors}"
    return reasons[0]


# --- the samples -----------------------------------------------------------------


def test_strategy_order_fill_reads_the_nested_strategy_fields() -> None:
    alert, secret = _parse(_sample("strategy-order-fill.json"))
    assert secret == "abcdefgh"
    assert alert.symbol == "DOGEUSDT"
    assert alert.side == "buy"
    assert alert.quantity == 10000
    assert alert.price == pytest.approx(0.0027451)
    assert alert.tag == "doge door"
    assert alert.order_type == "market"
    assert alert.account == "default"
    assert alert.time == datetime(2020, 9, 6, 1, 44, 17, tzinfo=UTC)
    # Nested objects stay whole in extras, for the audit trail.
    assert alert.extras["strategy"]["order_contracts"] == 10000
    assert alert.extras["exchange"] == "BINANCE"
    assert "ticker" not in alert.extras


def test_futures_short_entry_keeps_the_body_id_and_utc_times() -> None:
    alert, secret = _parse(_sample("futures-short-entry.json"))
    assert secret == "7f3c9a1e"
    assert alert.id == "ES1!-Short Entry-2025-01-15T14:30:01Z"
    assert alert.symbol == "ES1!"
    assert alert.side == "sell"
    assert alert.quantity == 2
    assert alert.price == 5931.25
    assert alert.time is not None
    assert alert.timenow is not None
    assert alert.time.utcoffset() == timedelta(0)
    assert alert.timenow.utcoffset() == timedelta(0)
    assert alert.time == datetime(2025, 1, 15, 14, 25, tzinfo=UTC)
    assert alert.timenow == datetime(2025, 1, 15, 14, 30, 1, tzinfo=UTC)
    assert alert.received_at == RECEIVED
    assert alert.extras["position_size"] == -2


def test_pine_alert_message_limit_order_with_tp_and_sl() -> None:
    alert, secret = _parse(_sample("pine-alert-message-limit.json"))
    assert secret == "7f3c9a1e"
    assert alert.account == "paper-1"
    assert alert.symbol == "NASDAQ:AAPL"
    assert alert.side == "buy"
    assert alert.quantity == 10
    assert alert.order_type == "limit"
    assert alert.limit_price == 189.4
    assert alert.take_profit == 195.5
    assert alert.stop_loss == 185.2
    assert alert.tag == "Long Entry"
    assert alert.extras == {}


def test_indicator_alert_has_no_quantity_and_keeps_extras() -> None:
    alert, secret = _parse(_sample("indicator-alert.json"))
    assert secret == "abcdefgh"
    assert alert.symbol == "ETHUSD"
    assert alert.side == "buy"
    assert alert.quantity is None
    assert alert.price == 3312.45
    assert alert.extras["rsi"] == 28.7
    assert alert.extras["exchange"] == "COINBASE"
    assert alert.extras["interval"] == "60"


def test_broken_json_names_the_byte_position() -> None:
    with pytest.raises(InvalidAlertError) as info:
        decode_body(_sample("broken-json.txt"))
    assert _fields(info.value.errors) == ["body"]
    assert "byte 35" in info.value.errors[0].reason
    assert "byte 35" in str(info.value)


def test_plain_text_says_a_json_object_is_required() -> None:
    with pytest.raises(InvalidAlertError) as info:
        decode_body(_sample("plain-text.txt"))
    assert _fields(info.value.errors) == ["body"]
    assert "a JSON object is required" in info.value.errors[0].reason


@pytest.mark.parametrize("body", [b"[1, 2]", b'"BTCUSDT"', b"42", b"null", b"true"])
def test_a_json_value_that_is_not_an_object_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidAlertError) as info:
        decode_body(body)
    assert _fields(info.value.errors) == ["body"]
    assert "JSON object is required" in info.value.errors[0].reason


# --- the secret ------------------------------------------------------------------


def test_pop_secret_removes_every_secret_key_and_returns_the_first_string() -> None:
    payload: dict[str, Any] = {
        "symbol": "AAPL",
        "secret": "s-secret-1",
        "passphrase": "p-secret-2",
        "key": "k-secret-3",
        "token": "t-secret-4",
    }
    assert pop_secret(payload) == "s-secret-1"
    assert payload == {"symbol": "AAPL"}


def test_pop_secret_skips_non_string_values_but_still_removes_them() -> None:
    payload: dict[str, Any] = {"secret": 12345678, "token": "t-secret-4", "side": "buy"}
    assert pop_secret(payload) == "t-secret-4"
    assert payload == {"side": "buy"}


def test_pop_secret_without_a_secret() -> None:
    payload: dict[str, Any] = {"symbol": "AAPL", "side": "buy"}
    assert pop_secret(payload) is None
    assert payload == {"symbol": "AAPL", "side": "buy"}


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_the_secret_never_reaches_the_alert(key: str) -> None:
    secret = "hunter2-very-secret"
    body = msgspec.json.encode({key: secret, "ticker": "AAPL", "action": "buy", "qty": 1})
    alert, found = _parse(body)
    assert found == secret
    assert key not in alert.extras
    assert secret not in repr(alert.extras)
    assert secret.encode() not in msgspec.json.encode(alert)


@pytest.mark.parametrize(
    "name",
    [
        "strategy-order-fill.json",
        "futures-short-entry.json",
        "pine-alert-message-limit.json",
        "indicator-alert.json",
    ],
)
def test_sample_secrets_never_reach_the_alert(name: str) -> None:
    alert, secret = _parse(_sample(name))
    assert secret is not None
    assert secret.encode() not in msgspec.json.encode(alert)
    assert not set(SECRET_KEYS) & set(alert.extras)


# --- the alert id ----------------------------------------------------------------


def test_id_without_body_id_is_stable_for_the_same_body() -> None:
    body = _sample("indicator-alert.json")
    first, _ = _parse(body)
    second, _ = _parse(body)
    assert first.id == second.id
    assert len(first.id) == 32


def test_id_differs_for_different_bodies() -> None:
    buy = _alert(symbol="AAPL", side="buy", qty=1)
    sell = _alert(symbol="AAPL", side="sell", qty=1)
    more = _alert(symbol="AAPL", side="buy", qty=2)
    assert len({buy.id, sell.id, more.id}) == 3


def test_id_does_not_depend_on_the_secret() -> None:
    a, secret_a = _parse(b'{"secret":"first-secret","ticker":"AAPL","action":"buy"}')
    b, secret_b = _parse(b'{"secret":"other-secret","ticker":"AAPL","action":"buy"}')
    c, secret_c = _parse(b'{"ticker":"AAPL","action":"buy"}')
    assert (secret_a, secret_b, secret_c) == ("first-secret", "other-secret", None)
    assert a.id == b.id == c.id


def test_id_does_not_depend_on_key_order() -> None:
    a = alert_id({"symbol": "A", "side": "buy", "bar": {"open": 1, "close": 2}})
    b = alert_id({"bar": {"close": 2, "open": 1}, "side": "buy", "symbol": "A"})
    assert a == b


def test_body_id_is_used_verbatim() -> None:
    assert _alert(id="my-alert-1", symbol="AAPL", side="buy").id == "my-alert-1"


def test_numeric_id_becomes_a_string() -> None:
    alert = _alert(id=12345, symbol="AAPL", side="buy")
    assert alert.id == "12345"
    assert isinstance(alert.id, str)


def test_over_long_id_is_refused() -> None:
    assert _alert(id="x" * 128, symbol="AAPL", side="buy").id == "x" * 128
    assert _fields(_errors(id="x" * 129, symbol="AAPL", side="buy")) == ["id"]


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
