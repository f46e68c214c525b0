"""The Alpaca adapter's errors, against a local server that speaks Alpaca's Trading API v2
(tests/alpaca_support.py) with Alpaca's error body `{"code": ..., "message": ...}`:
buying power (403), unknown assets (422), bad credentials (never shown), scripted
429/5xx answers (placing, lookup and close), slow answers, a refused connection, an
over-long client order id, and a redirect elsewhere, which keeps the keys home.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from tests.alpaca_support import (
    FAST,
    KEY_ID,
    SECRET,
    AlpacaBook,
    _order,
    alpaca_url_fixture,  # noqa: F401 (the `alpaca_url` fixture)
    book_fixture,  # noqa: F401 (the `book` fixture)
    broker_fixture,  # noqa: F401 (the `broker` fixture)
    connected,
)
from tests.support import free_port, serving_aiohttp
from worker.brokers.alpaca import AlpacaBroker, AlpacaConfig
from worker.errors import OrderRejectedError, RetryableError, TerminalError


async def test_insufficient_buying_power_is_rejected(broker: AlpacaBroker) -> None:
    with pytest.raises(OrderRejectedError, match="403: insufficient buying power"):
        await broker.place(_order(quantity=1000.0))


async def test_an_unknown_asset_is_rejected(broker: AlpacaBroker) -> None:
    with pytest.raises(OrderRejectedError, match="422: asset 'NOPE' not found"):
        await broker.place(_order(symbol="NOPE"))


async def test_bad_credentials_are_terminal_and_never_shown(alpaca_url: str) -> None:
    async with connected(alpaca_url, secret_key="wrong-secret") as broker:
        with pytest.raises(TerminalError, match="401") as caught:
            await broker.place(_order())
    assert not isinstance(caught.value, OrderRejectedError)
    assert "wrong-secret" not in str(caught.value)
    config = AlpacaConfig(key_id=KEY_ID, secret_key=SECRET)
    assert SECRET not in repr(config)
    assert SECRET not in f"{config}"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (429, {"code": 42910000, "message": "rate limit exceeded"}),
        (500, {"code": 50010000, "message": "internal server error occurred"}),
        (503, {"message": "service unavailable"}),
    ],
)
async def test_rate_limits_and_server_errors_are_retryable(
    broker: AlpacaBroker, book: AlpacaBook, status: int, body: dict[str, Any]
) -> None:
    book.script.append((status, body))
    with pytest.raises(RetryableError, match=str(status)):
        await broker.place(_order())
    # The next delivery goes through.
    assert (await broker.place(_order())).status == "filled"


async def test_lookup_errors_are_mapped_too(broker: AlpacaBroker, book: AlpacaBook) -> None:
    book.script.append((502, {"message": "bad gateway"}))
    with pytest.raises(RetryableError):
        await broker.lookup(_order())


async def test_a_slow_alpaca_is_a_retryable_timeout(broker: AlpacaBroker, book: AlpacaBook) -> None:
    book.delay = 10 * FAST
    with pytest.raises(RetryableError, match="no answer within"):
        await broker.place(_order())


async def test_connection_refused_is_retryable() -> None:
    async with connected(f"http://127.0.0.1:{free_port()}") as broker:
        with pytest.raises(RetryableError, match=r"(?i)connect"):
            await broker.place(_order())


async def test_an_over_long_client_order_id_is_terminal_before_sending(
    broker: AlpacaBroker, book: AlpacaBook
) -> None:
    with pytest.raises(TerminalError, match="128"):
        await broker.place(_order("x" * 129))
    assert book.requests == []


async def test_close_errors_are_mapped_too(broker: AlpacaBroker, book: AlpacaBook) -> None:
    book.script.append((503, {"message": "service unavailable"}))
    with pytest.raises(RetryableError, match="503"):
        await broker.place(_order("ab-close", side="close", quantity=0.0))
    assert book.orders == {}


async def test_a_redirect_elsewhere_is_not_followed_and_the_keys_stay_home() -> None:
    seen: list[dict[str, str]] = []

    async def other_host(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"status": "accepted"})

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", other_host)
    async with serving_aiohttp(other) as elsewhere:

        async def moved(_: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(location=f"{elsewhere}/v2/orders")

        api = web.Application()
        api.router.add_post("/v2/orders", moved)
        async with serving_aiohttp(api) as base, connected(base) as broker:
            with pytest.raises(TerminalError, match=r"307.*base URL"):
                await broker.place(_order())
    assert seen == []  # neither the order nor APCA-API-SECRET-KEY left for the other host
