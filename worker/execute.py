"""Execute one alert against its account's broker: plain async functions, testable
without NATS."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from worker.accounts import check_symbol, size
from worker.brokers.base import Order, OrderResult
from worker.errors import DuplicateOrderError, RetryableError

if TYPE_CHECKING:
    from contracts.messages import Alert
    from ops.platform.accounts import Account
    from worker.brokers.base import Broker


def client_order_id(account: str, alert_id: str) -> str:
    """The broker idempotency key of an alert: stable across redeliveries and replays.

    32 characters of `[a-z0-9]` ("ab" and 120 bits of a SHA-256), within every supported
    broker's rules: OKX clOrdId (alphanumeric, at most 32), Binance (36), Alpaca (128).
    """
    digest = hashlib.sha256(f"{account}\x00{alert_id}".encode()).hexdigest()
    return f"ab{digest[:30]}"


def to_order(alert: Alert, account: Account, quantity: float) -> Order:
    """The broker order for an alert, in the broker's symbol."""
    return Order(
        client_order_id=client_order_id(alert.account, alert.id),
        account=alert.account,
        symbol=account.broker_symbol(alert.symbol),
        side=alert.side,
        quantity=quantity,
        order_type=alert.order_type,
        limit_price=alert.limit_price,
        stop_price=alert.stop_price,
        take_profit=alert.take_profit,
        stop_loss=alert.stop_loss,
        reference_price=alert.price,
    )


def lookup_order(alert: Alert, account: Account) -> Order:
    """The order a broker lookup asks about: found by its client order id (and symbol),
    so its size does not matter and is not worked out again."""
    return to_order(alert, account, alert.quantity or 0.0)


async def execute(
    alert: Alert, account: Account, broker: Broker, default_quantity: float | None
) -> tuple[OrderResult, bool]:
    """Check, size and place the alert's order; return (result, already_done).

    A duplicate client order id means an earlier delivery placed the order: look it up.
    """
    check_symbol(alert, account)
    order = to_order(alert, account, await size(alert, account, broker, default_quantity))
    try:
        return await broker.place(order), False
    except DuplicateOrderError:
        existing = await broker.lookup(order)
        if existing is None:
            raise RetryableError(
                f"broker reports client order id {order.client_order_id} as a duplicate "
                "but cannot find it yet"
            ) from None
        return existing, True
