"""Who may send: the webhook secret or an HMAC signature, global (every account) or per account.

TradingView cannot set headers, so the secret travels in the body (`secret`,
`passphrase`, `key`, `token`) or as the last path segment. Senders that can sign
send `X-Signature: sha256=<hex>` = HMAC-SHA256(key, X-Timestamp + "." + body)
and `X-Timestamp` (unix seconds): a valid signature admits without a secret, a
present but wrong one is refused whatever the secret. Every configured secret or
key is compared in constant time, with no short-circuit, so the time taken tells
neither whether nor which one matched.

A signed request replayed inside the window carries the same alert id, which
JetStream deduplicates (the settings keep the window within the dedup window).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ops.platform.accounts import IngressAccounts
    from ops.platform.settings import Secret

SIGNATURE_SCHEME: Final = "sha256="
WRONG_SECRET: Final = "missing or wrong secret"  # noqa: S105 -- a reason, not a secret
WRONG_SIGNATURE: Final = "wrong signature"
SIGNATURE_REQUIRED: Final = "signature required (X-Signature and X-Timestamp)"
MAX_TIMESTAMP_DIGITS: Final = 12


def matches(secrets: tuple[Secret, ...], candidate: str | None) -> bool:
    """Constant-time check of `candidate` against every secret (rotation: any may match)."""
    if candidate is None:
        return False
    given = candidate.encode()
    matched = False
    for secret in secrets:
        matched |= secret.matches(given)
    return matched


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """The X-Signature value a sender puts on `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_SCHEME + digest


class Gate:
    """Decides whether a sender may place alerts for `account`."""

    def __init__(
        self,
        global_secrets: tuple[Secret, ...],
        accounts: IngressAccounts,
        *,
        hmac_keys: tuple[Secret, ...] = (),
        hmac_required: bool = False,
        hmac_window: float = 300.0,
    ) -> None:
        self._global = global_secrets
        self._accounts = accounts
        self._hmac_global = hmac_keys
        self._hmac_required = hmac_required
        self._window = hmac_window
        # With no key anywhere the signature headers are never even looked at.
        self.signs = bool(hmac_keys) or any(accounts.hmac_secrets.values())

    def admits(self, account: str, candidate: str | None) -> bool:
        """True when the secret is a global one, or one of this account's own."""
        own = self._accounts.secrets.get(account, ())
        return matches(self._global, candidate) | matches(own, candidate)

    def signature_required(self, account: str) -> bool:
        """Whether alerts for `account` must be signed."""
        return self._hmac_required or account in self._accounts.hmac_required

    def verify(
        self, account: str, body: bytes, signature: str, timestamp: str | None, now: float
    ) -> str | None:
        """None when `signature` is a valid one for `account`; else why not (for a 401)."""
        if timestamp is None or not _is_timestamp(timestamp):
            return "X-Timestamp (unix seconds) required with X-Signature"
        if abs(now - int(timestamp)) > self._window:
            return f"X-Timestamp outside the {self._window:g} s replay window"
        given = signature.strip().lower().encode()
        matched = False
        for key in self._hmac_global + self._accounts.hmac_secrets.get(account, ()):
            expected = sign(key.reveal().encode(), timestamp, body).encode()
            matched |= hmac.compare_digest(expected, given)
        return None if matched else WRONG_SIGNATURE

    def known(self, account: str) -> bool:
        """Whether alerts for `account` can be executed at all."""
        return self._accounts.known(account)

    def configured(self, account: str) -> bool:
        """Whether `account` is one of the configured names (without an accounts file
        every name is known, but only `default` is configured): safe to log."""
        return account in self._accounts.names

    def every_secret(self) -> tuple[Secret, ...]:
        """Every webhook secret and HMAC key, global or an account's (for ingress.redact)."""
        accounts = self._accounts
        own = [*accounts.secrets.values(), *accounts.hmac_secrets.values()]
        return self._global + self._hmac_global + tuple(s for keys in own for s in keys)


def _is_timestamp(value: str) -> bool:
    return 0 < len(value) <= MAX_TIMESTAMP_DIGITS and value.isascii() and value.isdigit()
