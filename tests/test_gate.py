"""The ingress's `Gate` as plain calls: secrets, rotation, HMAC window and key lookup.

The HTTP tests (test_signatures.py) show a 401 happens; these pin the edges that decide
it, each one a boundary a mutation test found unguarded.
"""

from __future__ import annotations

import hmac

import pytest

from ingress.auth import WRONG_SIGNATURE, Gate, matches, sign
from ops.platform.accounts import IngressAccounts
from ops.platform.settings import Secret

BODY = b'{"symbol":"AAPL","side":"buy"}'
NOW = 1_736_951_400.0
KEY = "k" * 32


def _accounts(*, any_name: bool = False) -> IngressAccounts:
    return IngressAccounts(names=frozenset({"default", "a1"}), any_name=any_name)


def _gate() -> Gate:
    return Gate((), _accounts(), hmac_keys=(Secret(KEY),))


def _signed(timestamp: str, key: str = KEY) -> str:
    return sign(key.encode(), timestamp, BODY)


def test_no_candidate_never_matches() -> None:
    assert matches((Secret("s" * 32),), None) is False
    assert matches((), None) is False


@pytest.mark.parametrize("which", [0, 1, 2])
def test_any_secret_of_a_rotation_matches(which: int) -> None:
    secrets = (Secret("first-secret"), Secret("second-secret"), Secret("third-secret"))
    candidate = ("first-secret", "second-secret", "third-secret")[which]
    assert matches(secrets, candidate) is True
    assert matches(secrets, candidate + "x") is False


def test_signatures_are_optional_unless_asked_for() -> None:
    gate = Gate((), _accounts())
    assert gate.signature_required("default") is False
    assert gate.signs is False
    assert Gate((), _accounts(), hmac_required=True).signature_required("default") is True


def test_the_replay_window_is_300_s_by_default_and_inclusive() -> None:
    gate = _gate()
    for skew in (-300.0, 0.0, 300.0):  # exactly on the edge is still inside
        timestamp = str(int(NOW + skew))
        assert gate.verify("default", BODY, _signed(timestamp), timestamp, NOW) is None
    for skew in (-301.0, 301.0):
        timestamp = str(int(NOW + skew))
        reason = gate.verify("default", BODY, _signed(timestamp), timestamp, NOW)
        assert reason == "X-Timestamp outside the 300 s replay window"
    # Half a second past the edge: the window is 300 s, not "about" 300 s.
    timestamp = str(int(NOW))
    assert gate.verify("default", BODY, _signed(timestamp), timestamp, NOW + 300.5) is not None


def test_a_global_key_signs_for_an_account_without_keys_of_its_own() -> None:
    gate = _gate()
    timestamp = str(int(NOW))
    assert gate.verify("a1", BODY, _signed(timestamp), timestamp, NOW) is None


@pytest.mark.parametrize("which", [0, 1])
def test_any_key_of_a_rotation_verifies(which: int) -> None:
    keys = ("a" * 32, "b" * 32)
    gate = Gate((), _accounts(), hmac_keys=tuple(Secret(k) for k in keys))
    timestamp = str(int(NOW))
    assert gate.verify("default", BODY, _signed(timestamp, keys[which]), timestamp, NOW) is None
    assert gate.verify("default", BODY, _signed(timestamp, "c" * 32), timestamp, NOW) == (
        WRONG_SIGNATURE
    )


@pytest.mark.parametrize("timestamp", ["7", "100000000000"])  # 1 and 12 digits
def test_timestamps_of_one_to_twelve_digits_are_read(timestamp: str) -> None:
    gate = _gate()
    now = float(timestamp)
    assert gate.verify("default", BODY, _signed(timestamp), timestamp, now) is None


@pytest.mark.parametrize("timestamp", ["", "1000000000000", "-1", "17e8", "١٧٣٦٩٥١٤٠٠"])
def test_anything_else_is_no_timestamp(timestamp: str) -> None:
    reason = _gate().verify("default", BODY, _signed(timestamp), timestamp, NOW)
    assert reason == "X-Timestamp (unix seconds) required with X-Signature"


def test_only_configured_names_are_configured() -> None:
    gate = Gate((), _accounts(any_name=True))
    assert gate.configured("a1") is True
    assert gate.configured("someone-else") is False
    assert gate.known("someone-else") is True


class _Spy:
    """`hmac.compare_digest`, counted: the comparisons the gate really makes."""

    def __init__(self) -> None:
        self.calls = 0
        self._real = hmac.compare_digest

    def __call__(self, a: bytes, b: bytes) -> bool:
        self.calls += 1
        return self._real(a, b)


def test_secrets_and_keys_are_compared_in_constant_time_with_no_short_circuit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`==` (or a loop that stops at the first match) tells by its timing whether and
    which secret matched: every configured secret and key goes through
    `hmac.compare_digest`, each time, whichever matches."""
    spy = _Spy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    rotation = (Secret("first-secret"), Secret("second-secret"), Secret("third-secret"))
    for candidate in ("first-secret", "third-secret", "wrong-secret"):
        spy.calls = 0
        assert matches(rotation, candidate) is (candidate != "wrong-secret")
        assert spy.calls == len(rotation), candidate
    gate = Gate((), _accounts(), hmac_keys=(Secret(KEY), Secret("j" * 32)))
    for key in (KEY, "j" * 32, "x" * 32):
        spy.calls = 0
        verdict = gate.verify("default", BODY, _signed("1736951400", key), "1736951400", NOW)
        assert (verdict is None) is (key != "x" * 32)
        assert spy.calls == 2, key
