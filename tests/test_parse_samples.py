"""Webhook bodies → `Alert`: the real TradingView samples, bodies that are not a JSON
object, the secret (never reaching the alert), and the alert id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from ingress.parse import SECRET_KEYS, InvalidAlertError, alert_id, decode_body, pop_secret
from tests.parse_support import RECEIVED, _alert, _errors, _fields, _parse, _sample

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
