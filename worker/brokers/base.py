"""The one protocol every broker adapter implements."""

from __future__ import annotations

from typing import Protocol

import msgspec

from contracts.messages import OrderType, Side


class Order(msgspec.Struct, frozen=True, kw_only=True):
    """What the worker asks a broker to do; `client_order_id` makes it idempotent."""

    client_order_id: str
    account: str
    symbol: str
    side: Side
    quantity: float
    order_type: OrderType
    limit_price: float | None = None
    stop_price: float | None = None
    take_profit: float | None = None
    stop_loss: float | None = None
    # The alert's price (TradingView's {{close}} or order price): a paper fill uses it.
    reference_price: float | None = None


class OrderResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the broker says about an order."""

    client_order_id: str
    broker_order_id: str
    status: str
    side: Side
    quantity: float
    fill_price: float | None = None


class Broker(Protocol):
    """A broker: places orders idempotently and finds them again by client order id.

    `lookup` gets the whole order, not only its client order id: most exchanges
    (Binance among them) find an order only by client order id *and* symbol, and a
    lookup may run in another process than the place that sent it.
    """

    name: str
    # Whether `lookup` asks the broker (False: it cannot tell whether an order exists).
    can_lookup: bool

    async def place(self, order: Order) -> OrderResult:
        """Place the order; raise DuplicateOrderError, RetryableError or TerminalError."""
        ...

    async def lookup(self, order: Order) -> OrderResult | None:
        """The broker's record of `order` (by its client order id), if it has one."""
        ...

    async def equity(self) -> float | None:
        """The account's equity in its currency, or None if the broker does not report it."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...
