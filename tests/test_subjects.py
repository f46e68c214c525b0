"""Subject tokens: any symbol or account survives the trip through a NATS subject."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from contracts.subjects import (
    ALERTS_PREFIX,
    alert_subject,
    decode_token,
    encode_token,
    split_alert_subject,
)

# Everything UTF-8 can carry: all code points except the lone surrogates.
_encodable = st.text(st.characters(codec="utf-8"), min_size=1)

_EXAMPLES = [
    "NASDAQ:AAPL",
    "ES1!",
    "BTC/USDT",
    "BRK.B",
    "a b",
    "*",
    ">",
    "%",
    "%2E",
    "tab\there",
    "日経225",
    "ÄÖÜ€",
    "🚀 moon",
]


def _assert_valid_token(token: str) -> None:
    assert token
    for forbidden in (".", "*", ">"):
        assert forbidden not in token, (forbidden, token)
    assert not any(ch.isspace() for ch in token), token


@given(_encodable)
@example("BRK.B")
@example(" ")
@example("\u2028")
def test_any_string_round_trips_as_one_safe_token(value: str) -> None:
    token = encode_token(value)
    _assert_valid_token(token)
    assert decode_token(token) == value


@pytest.mark.parametrize("value", _EXAMPLES)
def test_examples_round_trip(value: str) -> None:
    token = encode_token(value)
    _assert_valid_token(token)
    assert decode_token(token) == value


def test_readable_symbols_stay_readable() -> None:
    assert encode_token("NASDAQ:AAPL") == "NASDAQ:AAPL"
    assert encode_token("ES1!") == "ES1!"
    assert encode_token("BTC/USDT") == "BTC/USDT"
    assert encode_token("BRK.B") == "BRK%2EB"
    assert encode_token("%") == "%25"


def test_distinct_values_give_distinct_tokens() -> None:
    tokens = {encode_token(v) for v in _EXAMPLES}
    assert len(tokens) == len(_EXAMPLES)


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_token("")


@pytest.mark.parametrize(
    ("account", "symbol"),
    [
        ("default", "NASDAQ:AAPL"),
        ("paper-1", "BRK.B"),
        ("acct.with.dots", "ES1!"),
        ("a b", "*"),
        ("日本", ">"),
        ("%", "BTC/USDT"),
    ],
)
def test_alert_subject_round_trips(account: str, symbol: str) -> None:
    subject = alert_subject(account, symbol)
    parts = subject.split(".")
    assert len(parts) == 4
    assert ".".join(parts[:2]) == ALERTS_PREFIX
    assert split_alert_subject(subject) == (account, symbol)
    # The ALERTS stream stores it with a partition token appended.
    assert split_alert_subject(f"{subject}.3") == (account, symbol)


@given(_encodable, _encodable, st.integers(min_value=0, max_value=1023))
def test_alert_subject_round_trips_for_any_names(account: str, symbol: str, part: int) -> None:
    subject = alert_subject(account, symbol)
    assert split_alert_subject(subject) == (account, symbol)
    assert split_alert_subject(f"{subject}.{part}") == (account, symbol)


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "alerts",
        "alerts.in",
        "alerts.in.default",
        "alerts.out.default.AAPL",
        "events.executed.default.AAPL",
        "alertsXin.default.AAPL",
        "other.in.default.AAPL",
        # a stored subject has exactly one partition token after the symbol
        "alerts.in.default.AAPL.3.extra",
    ],
)
def test_split_rejects_non_alert_subjects(subject: str) -> None:
    with pytest.raises(ValueError, match="not an alert subject"):
        split_alert_subject(subject)
