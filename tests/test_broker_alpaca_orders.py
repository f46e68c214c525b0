"""The Alpaca adapter placing orders, against a local server that speaks Alpaca's Trading
API v2 (tests/alpaca_support.py): market, limit and stop orders, brackets and OTO exit
legs, time in force, the paper endpoint by default; a second submit is a duplicate that
lookup finds (422 "client_order_id must be unique"); and a close, sent as an order for
the whole position as `GET /v2/positions/{symbol}` shows it (long or short, crypto
positions named without the "/"), never as the `DELETE /v2/positions/{symbol}`
liquidation (it takes no client order id).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.alpaca_support import (
    KEY_ID,
    SECRET,
    AlpacaBook,
    _order,
    alpaca_url_fixture,  # noqa: F401 (the `alpaca_url` fixture)
    book_fixture,  # noqa: F401 (the `book` fixture)
    broker_fixture,  # noqa: F401 (the `broker` fixture)
    connected,
)
from worker.brokers.alpaca import LIVE_URL, PAPER_URL, AlpacaBroker, AlpacaConfig
from worker.brokers.base import Broker
from worker.errors import DuplicateOrderError, OrderRejectedError


def _sent(book: AlpacaBook) -> dict[str, Any]:
    """The body of the last POST /v2/orders."""
    posts = [body for method, path, body in book.requests if method == "POST"]
    assert posts and posts[-1] is not None
    return posts[-1]


# --- success ----------------------------------------------------------------------


def test_the_adapter_is_a_broker(broker: AlpacaBroker) -> None:
    adapter: Broker = broker  # mypy checks the protocol
    assert adapter.name == "alpaca"


async def test_market_buy_fills(broker: AlpacaBroker, book: AlpacaBook) -> None:
    result = await broker.place(_order())
    assert (result.client_order_id, result.status, result.side) == ("ab-1", "filled", "buy")
    assert (result.quantity, result.fill_price) == (10.0, 190.25)
    assert result.broker_order_id == book.orders["ab-1"]["id"]
    assert _sent(book) == {
        "symbol": "AAPL",
        "qty": "10",
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": "ab-1",
    }


async def test_limit_sell_is_accepted_at_its_price(broker: AlpacaBroker, book: AlpacaBook) -> None:
    result = await broker.place(
        _order(side="sell", quantity=2.5, order_type="limit", limit_price=195.5)
    )
    assert (result.status, result.side, result.quantity, result.fill_price) == (
        "accepted",
        "sell",
        2.5,
        None,
    )
    sent = _sent(book)
    assert (sent["type"], sent["qty"], sent["limit_price"]) == ("limit", "2.5", "195.5")
    assert "stop_price" not in sent


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(None, {"type": "stop", "stop_price": "200"}),
     (201.0, {"type": "stop_limit", "stop_price": "200", "limit_price": "201"})],
)  # fmt: skip
async def test_stop_orders(
    broker: AlpacaBroker, book: AlpacaBook, limit: float | None, expected: dict[str, str]
) -> None:
    await broker.place(_order(order_type="stop", stop_price=200.0, limit_price=limit))
    sent = _sent(book)
    assert {k: sent[k] for k in expected} == expected
    assert ("limit_price" in sent) == (limit is not None)


async def test_take_profit_and_stop_loss_make_a_bracket(
    broker: AlpacaBroker, book: AlpacaBook
) -> None:
    result = await broker.place(
        _order(order_type="limit", limit_price=189.4, take_profit=195.5, stop_loss=185.25)
    )
    assert result.status == "accepted"
    sent = _sent(book)
    assert sent["order_class"] == "bracket"
    assert sent["take_profit"] == {"limit_price": "195.5"}
    assert sent["stop_loss"] == {"stop_price": "185.25"}
    assert book.orders["ab-1"]["order_class"] == "bracket"


async def test_one_exit_leg_makes_an_oto(broker: AlpacaBroker, book: AlpacaBook) -> None:
    await broker.place(_order(stop_loss=185.0))
    sent = _sent(book)
    assert (sent["order_class"], sent["stop_loss"]) == ("oto", {"stop_price": "185"})
    assert "take_profit" not in sent


async def test_time_in_force_is_configurable_and_crypto_uses_gtc(
    alpaca_url: str, book: AlpacaBook
) -> None:
    async with connected(alpaca_url, time_in_force="gtc") as broker:
        await broker.place(_order("ab-stock"))
        assert _sent(book)["time_in_force"] == "gtc"
    async with connected(alpaca_url) as broker:
        result = await broker.place(_order("ab-crypto", symbol="BTC/USD", quantity=0.0125))
        assert _sent(book)["time_in_force"] == "gtc"
        assert _sent(book)["qty"] == "0.0125"
        assert result.fill_price == 97000.0


def test_paper_is_the_default_endpoint() -> None:
    assert AlpacaConfig(key_id=KEY_ID, secret_key=SECRET).base_url == PAPER_URL
    assert LIVE_URL == "https://api.alpaca.markets"


# --- duplicates and lookup --------------------------------------------------------


async def test_a_second_submit_is_a_duplicate_that_lookup_finds(
    broker: AlpacaBroker, book: AlpacaBook
) -> None:
    first = await broker.place(_order())
    with pytest.raises(DuplicateOrderError, match="client_order_id must be unique"):
        await broker.place(_order())
    assert await broker.lookup(_order()) == first
    assert await broker.lookup(_order("ab-unknown")) is None
    assert len(book.orders) == 1


# --- close ------------------------------------------------------------------------


def _deletes(book: AlpacaBook) -> list[str]:
    return [path for method, path, _ in book.requests if method == "DELETE"]


async def test_close_sells_the_whole_long_position_as_an_order(
    broker: AlpacaBroker, book: AlpacaBook
) -> None:
    await broker.place(_order("ab-1", quantity=10.0))
    await broker.place(_order("ab-2", quantity=5.0))
    result = await broker.place(_order("ab-close", side="close", quantity=0.0))
    assert (result.client_order_id, result.side, result.quantity) == ("ab-close", "sell", 15.0)
    assert result.status == "filled"
    assert book.requests[-2][:2] == ("GET", "/v2/positions/AAPL")
    assert _sent(book) == {
        "symbol": "AAPL",
        "qty": "15",
        "side": "sell",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": "ab-close",
    }
    assert "AAPL" not in book.positions
    assert _deletes(book) == []


async def test_close_a_short_crypto_position(broker: AlpacaBroker, book: AlpacaBook) -> None:
    book.positions["BTCUSD"] = -0.5
    result = await broker.place(_order("ab-close", symbol="BTC/USD", side="close", quantity=0))
    assert (result.side, result.quantity) == ("buy", 0.5)
    assert book.requests[-2][:2] == ("GET", "/v2/positions/BTCUSD")
    sent = _sent(book)
    assert (sent["symbol"], sent["side"], sent["qty"], sent["time_in_force"]) == (
        "BTC/USD",
        "buy",
        "0.5",
        "gtc",
    )
    assert "BTCUSD" not in book.positions


async def test_a_close_placed_twice_is_one_order(broker: AlpacaBroker, book: AlpacaBook) -> None:
    await broker.place(_order("ab-1", quantity=10.0))
    close = _order("ab-close", side="close", quantity=0.0)
    first = await broker.place(close)
    # The redelivery finds the position already gone, and the close order in the book.
    with pytest.raises(DuplicateOrderError, match="ab-close"):
        await broker.place(close)
    assert await broker.lookup(close) == first
    assert [o["client_order_id"] for o in book.orders.values()] == ["ab-1", "ab-close"]
    assert _deletes(book) == []


async def test_a_close_redelivered_before_it_fills_is_a_duplicate(
    broker: AlpacaBroker, book: AlpacaBook
) -> None:
    book.positions["AAPL"] = 7.0
    book.market_open = False  # the close waits for the open; the position is still there
    close = _order("ab-close", side="close", quantity=0.0)
    first = await broker.place(close)
    assert (first.status, first.side, first.quantity) == ("accepted", "sell", 7.0)
    with pytest.raises(DuplicateOrderError, match="client_order_id must be unique"):
        await broker.place(close)
    assert await broker.lookup(close) == first
    assert list(book.orders) == ["ab-close"]


async def test_close_without_a_position_is_rejected(broker: AlpacaBroker, book: AlpacaBook) -> None:
    with pytest.raises(OrderRejectedError, match="no open position in AAPL"):
        await broker.place(_order("ab-close", side="close", quantity=0.0))
    assert book.orders == {}
    assert _deletes(book) == []
