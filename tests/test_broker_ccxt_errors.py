"""The ccxt adapter's errors, against a local server that speaks Binance spot's REST API
(tests/ccxt_support.py) and answers with Binance's error bodies: `{"code": -1121, "msg":
"Invalid symbol."}`, insufficient balance, -2015, -1022 (bad credentials, never shown),
429 and 5xx, markets that fail to load, a slow exchange, a refused connection."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.ccxt_support import (
    API_KEY,
    FAST,
    SECRET,
    BinanceSpot,
    _order,
    binance_url_fixture,  # noqa: F401 (the `binance_url` fixture)
    broker_fixture,  # noqa: F401 (the `broker` fixture)
    connected,
    spot_fixture,  # noqa: F401 (the `spot` fixture)
)
from tests.support import free_port
from worker.brokers.ccxt_broker import CcxtBroker, CcxtConfig
from worker.errors import OrderRejectedError, RetryableError, TerminalError


async def test_insufficient_balance_is_rejected(broker: CcxtBroker) -> None:
    with pytest.raises(OrderRejectedError, match="InsufficientFunds"):
        await broker.place(_order(quantity=1.0))


async def test_binance_invalid_symbol_is_rejected(broker: CcxtBroker, spot: BinanceSpot) -> None:
    spot.delisted.add("ETHUSDT")
    with pytest.raises(OrderRejectedError, match=r"BadSymbol: .*-1121"):
        await broker.place(_order(symbol="ETH/USDT"))


async def test_a_symbol_ccxt_does_not_know_is_rejected(broker: CcxtBroker) -> None:
    with pytest.raises(OrderRejectedError, match="BadSymbol"):
        await broker.place(_order(symbol="NOPE/USDT"))


@pytest.mark.parametrize(
    ("key", "secret", "code"),
    [("wrong-key", SECRET, "-2015"), (API_KEY, "wrong-secret", "-1022")],
)
async def test_bad_credentials_are_terminal_and_never_shown(
    binance_url: str, key: str, secret: str, code: str
) -> None:
    async with connected(binance_url, api_key=key, secret=secret) as broker:
        with pytest.raises(TerminalError, match=code) as caught:
            await broker.place(_order())
    assert not isinstance(caught.value, OrderRejectedError)
    assert secret not in str(caught.value)
    assert SECRET not in repr(CcxtConfig(exchange="binance", api_key=API_KEY, secret=SECRET))


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (429, {"code": -1003, "msg": "Too many requests; current limit of IP(127.0.0.1) is "
                                    "6000 requests per minute."}),
        (500, {"code": -1001, "msg": "Internal error; unable to process your request. "
                                    "Please try again."}),
        (503, "Service Unavailable"),
    ],
)  # fmt: skip
async def test_rate_limits_and_server_errors_are_retryable(
    broker: CcxtBroker, spot: BinanceSpot, status: int, body: dict[str, Any] | str
) -> None:
    spot.script.append(("POST", "/api/v3/order", status, body))
    with pytest.raises(RetryableError):
        await broker.place(_order())
    assert (await broker.place(_order())).status == "filled"


async def test_markets_that_fail_to_load_are_loaded_again(
    broker: CcxtBroker, spot: BinanceSpot
) -> None:
    spot.script.append(("GET", "/api/v3/exchangeInfo", 502, "Bad Gateway"))
    with pytest.raises(RetryableError, match="ExchangeNotAvailable"):
        await broker.place(_order())
    assert (await broker.place(_order())).status == "filled"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_slow_exchange_is_a_retryable_timeout(
    broker: CcxtBroker, spot: BinanceSpot, method: str
) -> None:
    # GET: the check before placing; POST: the order itself.
    spot.slow, spot.delay = (method, "/api/v3/order"), 10 * FAST
    with pytest.raises(RetryableError, match=f"RequestTimeout: binance {method}") as caught:
        await broker.place(_order())
    # ccxt names the signed URL (a GET's query string) in its message: no signature shown.
    assert re.search(r"signature=(?!\*\*\*)", str(caught.value)) is None
    assert caught.value.__cause__ is None  # ccxt's own message is not chained along
    if method == "GET":
        assert "signature=***" in str(caught.value)


async def test_connection_refused_is_retryable() -> None:
    async with connected(f"http://127.0.0.1:{free_port()}") as broker:
        with pytest.raises(RetryableError):
            await broker.place(_order())
