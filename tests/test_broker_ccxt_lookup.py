"""The ccxt adapter's duplicates and lookup, against a local server that speaks Binance
spot's REST API (tests/ccxt_support.py), which keeps `newClientOrderId` unique among open
orders only: a known client order id is a duplicate, `{"code": -2010, "msg": "Duplicate
order sent."}` too, a filled order is never placed twice, another process finds the
order by client id and symbol."""

from __future__ import annotations

import pytest

from tests.ccxt_support import (
    BinanceSpot,
    _order,
    binance_url_fixture,  # noqa: F401 (the `binance_url` fixture)
    broker_fixture,  # noqa: F401 (the `broker` fixture)
    connected,
    spot_fixture,  # noqa: F401 (the `spot` fixture)
)
from worker.brokers.ccxt_broker import CcxtBroker
from worker.errors import DuplicateOrderError, RetryableError


async def test_a_known_client_order_id_is_a_duplicate_that_lookup_finds(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    first = await broker.place(_order(order_type="limit", limit_price=90000.0))
    with pytest.raises(DuplicateOrderError, match="ab-1"):
        await broker.place(_order(order_type="limit", limit_price=90000.0))
    found = await broker.lookup(_order(order_type="limit", limit_price=90000.0))
    assert found is not None
    assert (found.broker_order_id, found.status, found.side, found.quantity) == (
        first.broker_order_id,
        "open",
        "buy",
        0.01,
    )
    assert len(spot.posts) == 1
    assert await broker.lookup(_order("ab-unknown")) is None


async def test_binance_duplicate_order_sent_is_a_duplicate(binance_url: str) -> None:
    async with connected(binance_url, check_before_place=False) as broker:
        await broker.place(_order(order_type="limit", limit_price=90000.0))
        with pytest.raises(DuplicateOrderError, match="Duplicate order sent"):
            await broker.place(_order(order_type="limit", limit_price=90000.0))
        assert await broker.lookup(_order()) is not None


async def test_a_filled_order_is_not_placed_twice(binance_url: str, spot: BinanceSpot) -> None:
    # Binance takes a filled order's client id again: only the check before placing
    # keeps a redelivered market order from filling twice.
    async with connected(binance_url, check_before_place=False) as unchecked:
        await unchecked.place(_order())
        await unchecked.place(_order())
    assert len(spot.orders) == 2
    async with connected(binance_url) as broker:
        await broker.place(_order("ab-2"))
        with pytest.raises(DuplicateOrderError):
            await broker.place(_order("ab-2"))
    assert len(spot.orders) == 3


async def test_another_process_finds_the_order_by_client_id_and_symbol(
    binance_url: str, broker: CcxtBroker, spot: BinanceSpot
) -> None:
    order = _order(symbol="ETH/USDT", quantity=0.5)
    placed = await broker.place(order)
    # A fresh instance (another worker process, or this one after a restart) never saw
    # the order: the symbol comes with the order, not from memory.
    async with connected(binance_url) as other:
        found = await other.lookup(order)
        assert found is not None
        assert (found.client_order_id, found.broker_order_id, found.status) == (
            "ab-1",
            placed.broker_order_id,
            "filled",
        )
        assert (found.side, found.quantity, found.fill_price) == ("buy", 0.5, 3500.0)
        # The check before placing goes through the same lookup.
        with pytest.raises(DuplicateOrderError, match="ab-1"):
            await other.place(order)
        assert await other.lookup(_order("ab-1", symbol="BTC/USDT")) is None
    queries = [p for p in spot.queries if p.get("origClientOrderId") == "ab-1"]
    assert {q["symbol"] for q in queries} == {"ETHUSDT", "BTCUSDT"}
    assert len(spot.posts) == 1


async def test_lookup_errors_are_mapped(broker: CcxtBroker, spot: BinanceSpot) -> None:
    spot.script.append(("GET", "/api/v3/order", 503, "Service Unavailable"))
    with pytest.raises(RetryableError):
        await broker.lookup(_order())
