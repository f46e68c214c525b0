"""Execute one alert against a broker: a plain async function, testable without NATS."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from worker.brokers.base import Order, OrderResult
from worker.errors import DuplicateOrderError, RetryableError, TerminalError

if TYPE_CHECKING:
    from contracts.messages import Alert
    from worker.brokers.base import Broker


def client_order_id(account: str, alert_id: str) -> str:
    """The broker idempotency key of an alert: stable across redeliveries and replays.

    35 characters of `[a-z0-9-]`, within every supported broker's limit (Binance: 36).
    """
    digest = hashlib.sha256(f"{account}\x00{alert_id}".encode()).hexdigest()
    return f"ab-{digest[:32]}"


def to_order(alert: Alert, default_quantity: float | None) -> Order:
    """The broker order for an alert; TerminalError when it cannot be sized."""
    quantity = alert.quantity if alert.quantity is not None else default_quantity
    if quantity is None:
        if alert.side != "close":
            raise TerminalError(
                "the alert has no quantity and the account has no default quantity "
                "(set ALERTBRIDGE_DEFAULT_QUANTITY)"
            )
        quantity = 0.0  # close: the whole position
    return Order(
        client_order_id=client_order_id(alert.account, alert.id),
        account=alert.account,
        symbol=alert.symbol,
        side=alert.side,
        quantity=quantity,
        order_type=alert.order_type,
        limit_price=alert.limit_price,
        stop_price=alert.stop_price,
        take_profit=alert.take_profit,
        stop_loss=alert.stop_loss,
        reference_price=alert.price,
    )


async def execute(
    alert: Alert, broker: Broker, default_quantity: float | None
) -> tuple[OrderResult, bool]:
    """Place the alert's order; return (result, already_done).

    A duplicate client order id means an earlier delivery placed the order: look it up.
    """
    order = to_order(alert, default_quantity)
    try:
        return await broker.place(order), False
    except DuplicateOrderError:
        existing = await broker.lookup(order.client_order_id)
        if existing is None:
            raise RetryableError(
                f"broker reports client order id {order.client_order_id} as a duplicate "
                "but cannot find it yet"
            ) from None
        return existing, True
