"""The ccxt adapter placing orders, against a local server that speaks Binance spot's
REST API (tests/ccxt_support.py): market, limit and stop orders as Binance takes them,
what Binance spot refuses before sending, sandbox mode, equity, an unknown exchange."""

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
from worker.brokers.base import Broker
from worker.brokers.ccxt_broker import CcxtBroker, CcxtConfig
from worker.errors import OrderRejectedError


def test_the_adapter_is_a_broker(broker: CcxtBroker) -> None:
    adapter: Broker = broker  # mypy checks the protocol
    assert adapter.name == "ccxt:binance"


async def test_market_buy_fills(broker: CcxtBroker, spot: BinanceSpot) -> None:
    result = await broker.place(_order())
    assert (result.client_order_id, result.status, result.side) == ("ab-1", "filled", "buy")
    assert (result.quantity, result.fill_price) == (0.01, 97000.0)
    assert result.broker_order_id == "28000"
    sent = spot.posts[-1]
    assert (sent["symbol"], sent["side"], sent["type"]) == ("BTCUSDT", "BUY", "MARKET")
    assert (sent["quantity"], sent["newClientOrderId"]) == ("0.01", "ab-1")
    assert "price" not in sent
    assert spot.balances["BTC"] == pytest.approx(0.01)
    assert broker.name == "ccxt:binance"


async def test_limit_sell_is_open_at_its_price(broker: CcxtBroker, spot: BinanceSpot) -> None:
    spot.balances["ETH"] = 2.0
    result = await broker.place(
        _order(symbol="ETH/USDT", side="sell", quantity=1.5, order_type="limit", limit_price=3600)
    )
    assert (result.status, result.side, result.quantity, result.fill_price) == (
        "open",
        "sell",
        1.5,
        None,
    )
    sent = spot.posts[-1]
    assert (sent["type"], sent["price"], sent["timeInForce"]) == ("LIMIT", "3600", "GTC")


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(None, {"type": "STOP_LOSS", "stopPrice": "99000"}),
     (99100.0, {"type": "STOP_LOSS_LIMIT", "stopPrice": "99000", "price": "99100"})],
)  # fmt: skip
async def test_stop_orders(
    broker: CcxtBroker, spot: BinanceSpot, limit: float | None, expected: dict[str, str]
) -> None:
    result = await broker.place(_order(order_type="stop", stop_price=99000.0, limit_price=limit))
    assert result.status == "open"
    sent = spot.posts[-1]
    assert {k: sent[k] for k in expected} == expected


async def test_take_profit_and_stop_loss_are_refused_on_binance_spot(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    with pytest.raises(OrderRejectedError, match="take-profit or stop-loss"):
        await broker.place(_order(take_profit=99000.0, stop_loss=95000.0))
    assert spot.posts == []


async def test_sandbox_mode_with_the_url_override(binance_url: str) -> None:
    async with connected(binance_url, sandbox=True) as broker:
        assert (await broker.place(_order())).status == "filled"


async def test_a_stop_without_its_price_is_rejected_not_sent_as_market(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    with pytest.raises(OrderRejectedError, match="stop price"):
        await broker.place(_order(order_type="stop"))
    assert spot.posts == []


async def test_spot_reports_no_equity(broker: CcxtBroker) -> None:
    assert await broker.equity() is None


def test_an_unknown_exchange_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="no-such-exchange"):
        CcxtBroker(CcxtConfig(exchange="no-such-exchange", api_key="k", secret="s"))
