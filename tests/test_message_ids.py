"""The `Nats-Msg-Id`s JetStream deduplicates on, and the strictness of subject tokens.

A wrong message id is silent: two facts collapse into one, or a replay is dropped as a
duplicate of the original. So each id is pinned exactly here, as plain calls.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.messages import (
    Alert,
    AttemptFailed,
    Executed,
    alert_msg_id,
    event_msg_id,
    replay_msg_id,
)
from contracts.subjects import decode_token, encode_token, split_alert_subject

AT = datetime(2025, 1, 15, 14, 30, 2, tzinfo=UTC)
WHO: dict[str, Any] = {"alert_id": "abc", "account": "BRK.B fund", "symbol": "AAPL", "at": AT}


def _failed(attempts: int) -> AttemptFailed:
    return AttemptFailed(**WHO, error="timeout", attempts=attempts, stream_seq=7)


def _executed(replay: int = 0) -> Executed:
    return Executed(**WHO, replay=replay, side="buy", quantity=1.0, order_type="market",
                    client_order_id="ab1", broker="paper", broker_order_id="p-1",
                    status="filled", attempts=1, stream_seq=7)  # fmt: skip


def test_an_event_id_names_the_alert_its_round_and_its_kind() -> None:
    assert event_msg_id(_executed()) == "alert.BRK%2EB%20fund.abc:0:executed"
    assert event_msg_id(_executed(replay=2)) == "alert.BRK%2EB%20fund.abc:2:executed"


def test_every_failed_attempt_is_its_own_fact() -> None:
    assert event_msg_id(_failed(1)) == "alert.BRK%2EB%20fund.abc:0:attempt_failed:1"
    assert event_msg_id(_failed(1)) != event_msg_id(_failed(2))


def _alert(replay: int) -> Alert:
    return Alert(id="abc", account="a1", symbol="AAPL", side="buy", received_at=AT,
                 replay=replay)  # fmt: skip


def test_a_replay_round_has_its_own_message_id() -> None:
    assert replay_msg_id(_alert(0)) == alert_msg_id("a1", "abc") == "alert.a1.abc"
    assert replay_msg_id(_alert(1)) == "replay.1.alert.a1.abc"
    assert replay_msg_id(_alert(2)) == "replay.2.alert.a1.abc"


def test_a_token_that_is_not_utf8_is_refused_not_replaced() -> None:
    # A subject from outside the ingress could carry any bytes: "a\ufffd" would be
    # another account than the one the sender named.
    with pytest.raises(UnicodeDecodeError):
        decode_token("a%FF")
    with pytest.raises(UnicodeDecodeError):
        split_alert_subject("alerts.in.a%FF.AAPL")


def test_a_string_that_is_not_utf8_has_no_token() -> None:
    with pytest.raises(UnicodeEncodeError):  # a ValueError, as the empty token is
        encode_token("\ud800")
