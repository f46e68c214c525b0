"""The ccxt adapter's close, against a local server that speaks Binance spot's REST API
(tests/ccxt_support.py) with the order and trade history a close reads
(`/api/v3/allOrders`, `/api/v3/myTrades`, newest first up to `endTime`, at most `limit`
a page). A filled order is two trades (two makers), its commission charged in the
received asset at `fee_rate`, as Binance does without BNB.

A close sells what alertbridge's own orders (client ids of `client_order_id`'s shape)
bought and still hold, read from the exchange's order and trade history; or, with
`close_whole_balance` (in the adapter and in `alertbridge config check`), every free coin.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ops.platform.accounts import Account, CcxtSettings
from tests.ccxt_support import (
    API_KEY,
    SECRET,
    BinanceSpot,
    _order,
    binance_url_fixture,  # noqa: F401 (the `binance_url` fixture)
    broker_fixture,  # noqa: F401 (the `broker` fixture)
    connected,
    spot_fixture,  # noqa: F401 (the `spot` fixture)
)
from worker.accounts import make_broker
from worker.brokers import ccxt_ledger
from worker.brokers.base import Order
from worker.brokers.ccxt_broker import CcxtBroker
from worker.brokers.ccxt_ledger import CLIENT_ORDER_ID
from worker.errors import DuplicateOrderError, OrderRejectedError, TerminalError
from worker.execute import client_order_id

ALERTBRIDGE = str(Path(sys.executable).parent / "alertbridge")


def _ab(alert_id: str) -> str:
    """The client order id the worker gives an alert of the test account."""
    return client_order_id("binance-spot", alert_id)


def _close(alert_id: str = "close-1") -> Order:
    return _order(_ab(alert_id), side="close", quantity=0.0)


async def _trade(broker: CcxtBroker, alert_id: str, side: str, qty: float, **fields: Any) -> None:
    await broker.place(_order(_ab(alert_id), side=side, quantity=qty, **fields))


def _sold(spot: BinanceSpot) -> list[tuple[str, str]]:
    """(quantity, client order id) of every sell the exchange was sent."""
    return [(p["quantity"], p["newClientOrderId"]) for p in spot.posts if p["side"] == "SELL"]


def test_alertbridge_client_order_ids_are_what_the_ledger_recognises() -> None:
    assert CLIENT_ORDER_ID.fullmatch(client_order_id("any account", "any alert id"))
    assert not CLIENT_ORDER_ID.fullmatch("web_0f2c9a1b7e4d04c5e8a6b3d2e1f0a9b8c")
    assert not CLIENT_ORDER_ID.fullmatch("x-R4BD3S82" + "0" * 22)  # ccxt's own default


async def test_close_sells_only_what_alertbridge_bought(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    spot.balances["BTC"] = 1.0  # deposited
    spot.outside("BUY", 0.05)  # bought by hand on the website
    await _trade(broker, "b1", "buy", 0.01)
    await _trade(broker, "b2", "buy", 0.02)
    await _trade(broker, "s1", "sell", 0.005)
    await _trade(broker, "e1", "buy", 0.1, symbol="ETH/USDT")  # another symbol
    spot.outside("SELL", 0.02)  # sold by hand: the hand-bought coins, not alertbridge's
    result = await broker.place(_close())
    assert (result.side, result.status, result.quantity) == ("sell", "filled", 0.025)
    assert _sold(spot)[-1] == ("0.025", _ab("close-1"))
    assert spot.balances["BTC"] == pytest.approx(1.03)  # 1 + 0.05 - 0.02 stay
    assert spot.balances["ETH"] == pytest.approx(0.1)
    assert {"/api/v3/allOrders", "/api/v3/myTrades"} <= set(spot.history)


async def test_a_history_longer_than_a_page_is_read_to_its_start(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    spot.page = 3  # three orders or trades a page: every list takes several
    for n in range(5):
        await _trade(broker, f"b{n}", "buy", 0.01)
        spot.outside("BUY", 0.005)
    assert (await broker.place(_close())).quantity == 0.05
    assert spot.history.count("/api/v3/allOrders") >= 4
    assert spot.history.count("/api/v3/myTrades") >= 4


async def test_a_history_longer_than_the_page_limit_sells_nothing(
    broker: CcxtBroker, spot: BinanceSpot, monkeypatch: pytest.MonkeyPatch
) -> None:
    spot.page = 2
    for n in range(3):
        await _trade(broker, f"b{n}", "buy", 0.01)
    monkeypatch.setattr(ccxt_ledger, "MAX_PAGES", 1)
    with pytest.raises(TerminalError, match=r"more than 1 pages of BTC/USDT history.*whole_bal"):
        await broker.place(_close())
    assert _sold(spot) == []


async def test_the_ledger_is_capped_by_the_free_balance(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    await _trade(broker, "b1", "buy", 0.05)
    spot.outside("SELL", 0.03)  # the owner sold some by hand
    assert (await broker.place(_close())).quantity == 0.02
    assert spot.balances["BTC"] == pytest.approx(0.0)


async def test_fees_charged_in_the_base_asset_are_not_sold(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    spot.fee_rate = 0.001  # 0.1 %, taken from the bought BTC
    await _trade(broker, "b1", "buy", 0.01)
    await _trade(broker, "b2", "buy", 0.02)
    assert spot.balances["BTC"] == pytest.approx(0.02997)
    await _trade(broker, "s1", "sell", 0.01)  # a sale's fee is in USDT
    spot.balances["BTC"] += 1.0  # and coins from elsewhere
    assert (await broker.place(_close())).quantity == 0.01997
    assert _sold(spot)[-1][0] == "0.01997"
    assert spot.balances["BTC"] == pytest.approx(1.0)


async def test_partial_fills_count_what_filled(broker: CcxtBroker, spot: BinanceSpot) -> None:
    spot.balances["BTC"] = 1.0
    spot.fill_only[_ab("b1")] = 0.004  # of 0.01: the rest expired unfilled
    result = await broker.place(_order(_ab("b1"), quantity=0.01))
    assert (result.status, result.quantity) == ("expired", 0.01)
    await _trade(broker, "b2", "buy", 0.02, order_type="limit", limit_price=90000.0)  # resting
    assert (await broker.place(_close())).quantity == 0.004
    assert spot.balances["BTC"] == pytest.approx(1.0)


async def test_close_with_nothing_bought_is_terminal_and_sends_nothing(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    spot.balances["BTC"] = 2.0
    spot.outside("BUY", 0.5)
    with pytest.raises(TerminalError, match="nothing bought through alertbridge to close for "
                       "BTC/USDT") as caught:  # fmt: skip
        await broker.place(_close())
    assert not isinstance(caught.value, OrderRejectedError)
    assert _sold(spot) == []


async def test_a_second_close_finds_nothing_left(broker: CcxtBroker, spot: BinanceSpot) -> None:
    spot.balances["BTC"] = 1.0
    await _trade(broker, "b1", "buy", 0.01)
    assert (await broker.place(_close("close-1"))).quantity == 0.01
    with pytest.raises(TerminalError, match="nothing bought through alertbridge"):
        await broker.place(_close("close-2"))
    assert _sold(spot) == [("0.01", _ab("close-1"))]
    assert spot.balances["BTC"] == pytest.approx(1.0)


async def test_held_coins_that_are_no_longer_free_are_rejected(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    await _trade(broker, "b1", "buy", 0.01)
    spot.outside("SELL", 0.01)
    with pytest.raises(OrderRejectedError, match="no free BTC to sell to close BTC/USDT"):
        await broker.place(_close())
    assert _sold(spot) == []


@pytest.mark.parametrize("check_before_place", [True, False])
async def test_a_redelivered_close_does_not_sell_again(
    binance_url: str, spot: BinanceSpot, check_before_place: bool
) -> None:
    # Checked: the lookup by client order id finds it. Unchecked (or an exchange whose
    # lookup cannot find it): the close is among the orders its own ledger reads.
    spot.balances["BTC"] = 1.0
    async with connected(binance_url, check_before_place=check_before_place) as broker:
        await _trade(broker, "b1", "buy", 0.03)
        first = await broker.place(_close())
        with pytest.raises(DuplicateOrderError, match=_ab("close-1")):
            await broker.place(_close())
        found = await broker.lookup(_close())
    assert found is not None
    assert (found.broker_order_id, found.side, found.quantity) == (
        first.broker_order_id,
        "sell",
        0.03,
    )
    assert _sold(spot) == [("0.03", _ab("close-1"))]
    assert spot.balances["BTC"] == pytest.approx(1.0)


async def test_close_whole_balance_sells_every_free_coin(
    binance_url: str, spot: BinanceSpot
) -> None:
    spot.balances["BTC"] = 0.123456789
    async with connected(binance_url, close_whole_balance=True) as broker:
        await _trade(broker, "b1", "buy", 0.01)
        result = await broker.place(_close())
        assert (result.side, result.status, result.quantity) == ("sell", "filled", 0.13345)
        assert _sold(spot)[-1] == ("0.13345", _ab("close-1"))
        assert spot.history == []  # no ledger read
        with pytest.raises(OrderRejectedError, match="minimum amount precision"):
            await broker.place(_close("close-2"))  # 0.000006789 BTC left: below a lot
    assert len(_sold(spot)) == 1


async def test_an_exchange_without_fetch_orders_reads_its_closed_and_open_orders(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    await _trade(broker, "b1", "buy", 0.02)
    await _trade(broker, "b2", "buy", 0.01, order_type="limit", limit_price=90000.0)
    broker._exchange.has["fetchOrders"] = False  # ccxt's capability flags of another exchange
    assert (await broker.place(_close())).quantity == 0.02
    assert "/api/v3/openOrders" in spot.history


async def test_an_exchange_without_order_history_cannot_close_what_it_bought(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    await _trade(broker, "b1", "buy", 0.02)
    for method in ("fetchOrders", "fetchCanceledAndClosedOrders", "fetchClosedOrders"):
        broker._exchange.has[method] = False
    with pytest.raises(TerminalError, match=r"no order history in ccxt.*close_whole_balance"):
        await broker.place(_close())
    assert _sold(spot) == []


async def test_the_accounts_file_option_reaches_the_adapter(
    binance_url: str, spot: BinanceSpot
) -> None:
    spot.balances["BTC"] = 0.5
    env = {"K": API_KEY, "S": SECRET}
    for whole, sold in ((False, None), (True, "0.5")):
        settings = CcxtSettings(exchange="binance", api_key_env="K", secret_env="S",
                                api_url=binance_url, close_whole_balance=whole)  # fmt: skip
        broker = make_broker(Account(broker=settings), env, paper_db="unused.db")
        try:
            if sold is None:
                with pytest.raises(TerminalError, match="nothing bought"):
                    await broker.place(_close(f"close-{whole}"))
            else:
                await broker.place(_close(f"close-{whole}"))
        finally:
            await broker.close()
    assert [q for q, _ in _sold(spot)] == ["0.5"]


CONFIG = """
[accounts.crypto]
broker = "ccxt"
ccxt = {{ exchange = "binance", api_key_env = "BINANCE_KEY", secret_env = "BINANCE_SECRET"{extra} }}
"""


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        ("", 0, "1 account(s) OK"),
        (", close_whole_balance = true", 0, "1 account(s) OK"),
        (", close_whole_balance = false", 0, "1 account(s) OK"),
        (', close_whole_balance = "yes"', 2, "ccxt.close_whole_balance"),
        (", close_whole_balanc = true", 2, "close_whole_balanc"),
    ],
)
def test_config_check_on_close_whole_balance(
    tmp_path: Path, extra: str, code: int, needle: str
) -> None:
    path = tmp_path / "alertbridge.toml"
    path.write_text(CONFIG.format(extra=extra))
    env = {**os.environ, "ALERTBRIDGE_CONFIG": str(path),
           "BINANCE_KEY": "k" * 16, "BINANCE_SECRET": "s" * 16}  # fmt: skip
    done = subprocess.run([ALERTBRIDGE, "config", "check"], env=env, capture_output=True,
                          text=True, check=False, timeout=30)  # fmt: skip
    assert done.returncode == code, done.stderr
    assert needle in (done.stdout if code == 0 else done.stderr)
