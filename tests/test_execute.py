"""`worker.execute` as plain calls against the paper broker: what reaches the order.

test_paper.py covers placing and redelivery; these pin the fields and inputs a
mutation test found unguarded (the stop price, the default quantity, the broker's
equity for sizing).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from contracts.messages import Alert
from ops.platform.accounts import Account, PercentOfEquity
from worker.brokers.paper import PaperBroker
from worker.execute import execute, to_order

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

RECEIVED = datetime(2025, 1, 15, 14, 30, 2, tzinfo=UTC)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[PaperBroker]:
    book = PaperBroker(tmp_path / "paper.db", equity=50_000.0)
    yield book
    await book.close()


def _alert(**fields: Any) -> Alert:
    values: dict[str, Any] = {"id": "alert-1", "symbol": "AAPL", "side": "buy",
                              "price": 200.0, "received_at": RECEIVED}  # fmt: skip
    return Alert(**{**values, **fields})


def test_a_stop_order_carries_its_stop_price() -> None:
    order = to_order(_alert(order_type="stop", stop_price=185.5), Account(), 1.0)
    assert (order.order_type, order.stop_price) == ("stop", 185.5)


async def test_without_quantity_or_rule_the_default_quantity_is_placed(
    broker: PaperBroker,
) -> None:
    result, _ = await execute(_alert(), Account(), broker, 7.0)
    assert result.quantity == 7.0


async def test_percent_of_equity_asks_the_broker_it_places_on(broker: PaperBroker) -> None:
    rule = Account(sizing=PercentOfEquity(percent=2.0))
    result, _ = await execute(_alert(), rule, broker, None)
    assert result.quantity == 5.0  # 2 % of 50,000 at 200
