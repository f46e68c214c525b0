"""No configured secret is stored: a value that holds one is replaced, a key that holds one dropped.

`ingress.parse.pop_secret` removes the keys meant to carry the secret; a secret can
still arrive anywhere else: pasted into a comment or a tag, nested, in a list, as a
key, or as another account's secret or an HMAC key. `Redactor` is built once from
every configured secret (`Gate.every_secret`) and cleans the decoded body before it
becomes an alert: a string (or a number whose JSON holds a secret's digits) that
contains a secret becomes `REDACTED`, an object key that contains one is dropped
with its value. The typed fields are no exception; `ingress.parse` refuses an alert
whose id, account or symbol came out as `REDACTED` (a redacted name is no name).

Most bodies hold no secret but the one just popped, and the raw bytes prove it
without a walk: with no backslash in the body (so no JSON escape can spell a secret
in other bytes) every string is its own bytes, so a secret held by any string left
shows up in the body more often than in the popped candidate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ops.platform.settings import Secret

REDACTED: Final = "[redacted]"
_NUMBER_CHARS: Final = frozenset("0123456789+-.eE")
_encode: Final = msgspec.json.encode


class Redactor:
    """Removes every configured secret from a decoded body."""

    __slots__ = ("_needles", "_numeric", "_secrets")

    def __init__(self, secrets: Iterable[Secret]) -> None:
        values = {secret.reveal() for secret in secrets}
        values.discard("")  # an empty secret is in every string (settings refuse one anyway)
        self._secrets = tuple(sorted(values))
        self._needles = tuple((value, value.encode()) for value in self._secrets)
        # Only a secret made of what a JSON number is made of can be in one.
        self._numeric = any(set(value) <= _NUMBER_CHARS for value in self._secrets)

    def clean(self, payload: dict[str, Any], body: bytes, popped: str | None) -> dict[str, Any]:
        """`payload` (decoded from `body`, with `popped` the secret `pop_secret` removed)
        without any secret: the same object when it holds none, else a cleaned copy."""
        if not self.may_hold(body, popped):
            return payload
        cleaned: dict[str, Any] = self._clean(payload)
        return cleaned

    def holds(self, text: str) -> bool:
        """Whether `text` contains a configured secret."""
        return any(secret in text for secret in self._secrets)

    def may_hold(self, body: bytes, popped: str | None) -> bool:
        """False when the raw bytes prove no secret is left in the payload (the usual case)."""
        if not self._needles:
            return False
        if b"\\" in body:  # an escape (\u0041 is "A") can spell a secret: look at every string
            return True
        for text, raw in self._needles:
            # A secret's UTF-8 bytes occur in UTF-8 text exactly where the secret does.
            expected = popped.count(text) if popped else 0
            if body.count(raw) > expected:
                return True
        return False

    def _clean(self, value: Any) -> Any:
        """Recursive: `decode_body` bounds the depth to `MAX_DEPTH`."""
        if isinstance(value, str):
            return REDACTED if self.holds(value) else value
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items() if not self.holds(k)}
        if isinstance(value, list):
            return [self._clean(item) for item in value]
        if self._numeric and isinstance(value, int | float) and not isinstance(value, bool):
            # A secret of digits sent as a number: what would be stored is its JSON.
            return REDACTED if self.holds(_encode(value).decode()) else value
        return value
