"""One log line per refusal, within a bound: a flood of refusals cannot fill the disk.

Every refusal the ingress answers (ingress.app, the checks of ingress.guard, and the
431 and 408 that ingress.serve writes before any app) calls `note`. The line holds the
status, our own reason (never the value sent), the source address, and the account
when it is a configured one; never the secret, the body or the URL path (the path
may be the secret). 401 and 403 log at WARNING (someone without the secret, the
signature, the address or the certificate: worth a look); every other refusal, a
sender's mistake (too big, too slow, malformed, too many), at INFO.

The bound is a token bucket per process: `PER_SECOND` lines a second, bursts of as
many. Past it refusals are counted instead, and one WARNING says how many, a
second after the first one left out (or at the next refusal, if no event loop runs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("ingress.refusals")

PER_SECOND: Final = 10
SUMMARY_AFTER: Final = 1.0  # seconds from the first refusal left out to the line counting them
_WARN: Final = frozenset({401, 403})


class RefusalLog:
    """Logs refusals, at most `per_second` lines a second; counts the rest."""

    def __init__(
        self, per_second: int = PER_SECOND, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = float(per_second)
        self._tokens = float(per_second)
        self._clock = clock
        self._last = clock()
        self._left_out = 0
        self._since = 0.0  # when the first refusal left out was

    def note(self, status: int, reason: str, *, source: str | None, account: str | None) -> None:
        """Log one refusal, or count it when over the bound."""
        now = self._clock()
        if self._left_out and now - self._since >= SUMMARY_AFTER:
            self.flush()  # the timer did not run (no loop, or a closed one)
        self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            _line(status, reason, source, account)
            return
        if not self._left_out:
            self._since = now
            _call_later(SUMMARY_AFTER, self.flush)
        self._left_out += 1

    def flush(self) -> None:
        """The line counting the refusals left out since the last one (if any were)."""
        if not self._left_out:
            return
        count, self._left_out = self._left_out, 0
        log.warning(
            "%d refusals not logged in %.1f s (at most %d lines a second)",
            count,
            self._clock() - self._since,
            int(self._rate),
            extra={"suppressed": count},
        )


def _line(status: int, reason: str, source: str | None, account: str | None) -> None:
    level = logging.WARNING if status in _WARN else logging.INFO
    where = f"from {source or 'an unknown address'}"
    if account is not None:
        where += f", account {account}"
    log.log(
        level,
        "refused %d: %s (%s)",
        status,
        reason,
        where,
        extra={"status": status, "reason": reason, "source": source, "account": account},
    )


def _call_later(delay: float, callback: Callable[[], None]) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop: `note` flushes at the next refusal
        return
    loop.call_later(delay, callback)


# The process's one bucket: the app and every connection's protocol share it.
process_log = RefusalLog()


def note(status: int, reason: str, *, source: str | None, account: str | None = None) -> None:
    """Log a refusal within the process's bound (see the module docstring)."""
    process_log.note(status, reason, source=source, account=account)
