"""One exception root for everything that can go wrong executing an alert.

    ExecutionError
    ├── RetryableError      timeouts, connection errors, broker 5xx/429: redeliver later
    └── TerminalError       the order can never succeed as sent: record, then term
        └── OrderRejectedError   the broker refused the order (unknown symbol, no funds, ...)

A TerminalError ends an alert `rejected`; a RetryableError, or any exception this tree
does not name, has it retried. What each outcome then does (event, DLQ entry, ack, nak
or term) is one table: `worker.outcomes.RULES`.
"""

from __future__ import annotations


class ExecutionError(Exception):
    """Root of every failure while executing an alert."""


class RetryableError(ExecutionError):
    """May succeed later: the server redelivers the alert after a backoff."""


class TerminalError(ExecutionError):
    """Cannot succeed as sent: retrying would only repeat the failure."""


class OrderRejectedError(TerminalError):
    """The broker refused the order."""


class DuplicateOrderError(ExecutionError):
    """The broker already has an order with this client order id: it was placed before."""


def backoff(attempt: int, schedule: tuple[float, ...]) -> float:
    """Seconds before redelivery after failed attempt `attempt` (1-based)."""
    return schedule[min(attempt, len(schedule)) - 1]
