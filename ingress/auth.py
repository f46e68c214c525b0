"""Who may send: the webhook secret, global (every account) or per account.

TradingView cannot set headers, so the secret travels in the body (`secret`,
`passphrase`, `key`, `token`) or as the last path segment. Every configured
secret is compared in constant time, with no short-circuit, so the time taken
tells neither whether nor which secret matched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ops.accounts import Accounts
    from ops.settings import Secret


def matches(secrets: tuple[Secret, ...], candidate: str | None) -> bool:
    """Constant-time check of `candidate` against every secret (rotation: any may match)."""
    if candidate is None:
        return False
    given = candidate.encode()
    matched = False
    for secret in secrets:
        matched |= secret.matches(given)
    return matched


class Gate:
    """Decides whether a sender holding `candidate` may place alerts for `account`."""

    def __init__(self, global_secrets: tuple[Secret, ...], accounts: Accounts) -> None:
        self._global = global_secrets
        self._accounts = accounts

    def admits(self, account: str, candidate: str | None) -> bool:
        """True when the secret is a global one, or one of this account's own."""
        own = self._accounts.secrets.get(account, ())
        return matches(self._global, candidate) | matches(own, candidate)

    def known(self, account: str) -> bool:
        """Whether alerts for `account` can be executed at all."""
        return self._accounts.get(account) is not None
