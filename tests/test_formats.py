"""3Commas, TradersPost and PineConnector bodies through the real ingress (ingress.formats).

Each documented sample (tests/samples/FORMATS.md) is posted over HTTP to the ingress
under uvicorn and read back from the ALERTS stream: every mapped field is checked where
it is stored. Every refusal is made to happen, and each format's secret is attacked:
a wrong one is a 401 before any field is looked at, and nothing is stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.client import Client

from contracts.messages import Alert
from contracts.subjects import ALERTS_STREAM
from tests.ingress_support import SECRET, serving_ingress, settings, stored
from tests.support import SAMPLES, NatsServer

LICENSE = "60123456789"  # PineConnector's example license id, as the samples carry it


@pytest.fixture
async def ingress(nats_server: NatsServer, nc: Client) -> AsyncIterator[str]:
    """The ingress, with our secret and (for the license-only lines) the license id as one."""
    async with serving_ingress(settings(nats_server.url, secrets=f"{SECRET},{LICENSE}")) as url:
        yield url


async def post(url: str, body: bytes, path: str = "/webhook") -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.post(url + path, content=body)


async def last_alert(nc: Client) -> tuple[Alert, bytes]:
    """The last alert on ALERTS, and its bytes as stored."""
    js = nc.jetstream()
    last = (await js.stream_info(ALERTS_STREAM)).state.last_seq
    msg = await js.get_msg(ALERTS_STREAM, seq=last, direct=True)
    assert msg.data is not None
    return msgspec.json.decode(msg.data, type=Alert), msg.data


def fields(alert: Alert) -> dict[str, Any]:
    """The alert's fields as stored, without those the ingress sets itself."""
    out: dict[str, Any] = msgspec.to_builtins(alert)
    for internal in ("type", "id", "received_at", "replay", "account"):
        out.pop(internal, None)
    return out


# sample -> the alert's fields (JSON builtins, defaults included)
EXPECTED: dict[str, dict[str, Any]] = {
    "3commas-strategy.json": {
        "symbol": "BTCUSDT", "side": "buy", "quantity": 0.015, "order_type": "market",
        "price": 67432.5, "timenow": "2025-01-15T14:30:02Z",
        "extras": {
            "max_lag": "300", "tv_exchange": "BINANCE",
            "bot_uuid": "3f1c2a6e-8d4b-4c7a-9e2f-5b6d7c8e9f01",
            "strategy_info": {
                "market_position": "long", "market_position_size": "0.015",
                "prev_market_position": "flat", "prev_market_position_size": "0",
            },
        },
    },
    "3commas-custom-exit-long.json": {
        "symbol": "BTCUSDT", "side": "close", "order_type": "market", "price": 67510.25,
        "timenow": "2025-01-15T15:00:01Z",
        "extras": {"max_lag": "300", "tv_exchange": "BINANCE",
                   "bot_uuid": "3f1c2a6e-8d4b-4c7a-9e2f-5b6d7c8e9f01"},
    },
    "traderspost-strategy.json": {
        "symbol": "TSLA", "side": "close", "quantity": 5.0, "order_type": "market",
        "price": 420.69, "extras": {"sentiment": "flat"},
    },
    "traderspost-bracket.json": {
        "symbol": "AAPL", "side": "buy", "quantity": 10.0, "order_type": "limit",
        "price": 101.5, "limit_price": 100.0, "take_profit": 110.0, "stop_loss": 90.0,
        "extras": {"sentiment": "bullish"},
    },
    "pineconnector-buy.txt": {
        "symbol": "EURUSD", "side": "buy", "quantity": 0.1, "order_type": "market",
        "stop_loss": 1.0712, "take_profit": 1.0905, "comment": "strategy 1", "extras": {},
    },
    "pineconnector-secret.txt": {
        "symbol": "EURUSD", "side": "sell", "quantity": 1.0, "order_type": "market",
        "extras": {},
    },
    "pineconnector-buylimit.txt": {
        "symbol": "GER30", "side": "buy", "quantity": 2.0, "order_type": "limit",
        "limit_price": 18250.5, "extras": {},
    },
    "pineconnector-closelong.txt": {
        "symbol": "GBPUSD", "side": "close", "order_type": "market", "extras": {},
    },
}  # fmt: skip
_DEFAULTS = {"quantity": None, "price": None, "limit_price": None, "stop_price": None,
             "take_profit": None, "stop_loss": None, "tag": None, "comment": None,
             "time": None, "timenow": None, "replayed_at": None}  # fmt: skip


@pytest.mark.parametrize("sample", sorted(EXPECTED))
async def test_documented_sample_becomes_the_same_alert(
    ingress: str, nc: Client, sample: str
) -> None:
    raw = (SAMPLES / sample).read_bytes()
    # TradersPost's password is in its URL, as ours can be
    path = f"/webhook/{SECRET}" if sample.startswith("traderspost") else "/webhook"
    answer = await post(ingress, raw, path)
    assert answer.status_code == 200, answer.text
    alert, data = await last_alert(nc)
    assert alert.id == answer.json()["id"]
    assert fields(alert) == {**_DEFAULTS, **EXPECTED[sample]}
    assert SECRET.encode() not in data and LICENSE.encode() not in data


async def test_a_resent_line_is_a_duplicate(ingress: str, nc: Client) -> None:
    """TradingView resends: the same line is one alert (its id is the mapped body's hash)."""
    raw = (SAMPLES / "pineconnector-closelong.txt").read_bytes()
    first, second = [(await post(ingress, raw)).json() for _ in range(2)]
    assert first["id"] == second["id"] and second["duplicate"] is True
    assert await stored(nc) == 1


def _three_commas(**fields: Any) -> bytes:
    body = json.loads((SAMPLES / "3commas-strategy.json").read_bytes())
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def _traderspost(**fields: Any) -> bytes:
    body = {"ticker": "AAPL", "action": "buy", "sentiment": "bullish", "quantity": 1, **fields}
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


# (what, path, body, the only refused field, a phrase of its reason)
REFUSED: list[tuple[str, str, bytes, str, str]] = [
    ("pc: unknown command", "", f"{LICENSE},closeall,EURUSD".encode(), "command", "one of"),
    ("pc: no command", "", json.dumps({"key": LICENSE, "pineconnector": []}).encode(),
     "command", "second field"),
    ("pc: no symbol", "", f"{LICENSE},buy".encode(), "symbol", "third field"),
    ("pc: a parameter as symbol", "", f"{LICENSE},buy,risk=1".encode(), "symbol", "third"),
    ("pc: not name=value", "", f"{LICENSE},buy,EURUSD,risk".encode(), "pineconnector",
     "name=value"),
    ("pc: relative stop", "", f"{LICENSE},buy,EURUSD,sl_pips=20".encode(), "pineconnector",
     "relative"),
    ("pc: dollar size", "", f"{LICENSE},buy,EURUSD,vol_dollar=50".encode(), "pineconnector",
     "relative"),
    ("pc: trailing", "", f"{LICENSE},buy,EURUSD,risk=1,trailtrig=20".encode(),
     "pineconnector", "relative"),
    ("pc: unknown parameter", "", f"{LICENSE},buy,EURUSD,spread=3".encode(),
     "pineconnector", "a parameter other than"),
    ("pc: price at market", "", f"{LICENSE},buy,EURUSD,price=1.1".encode(), "price",
     "only with"),
    ("pc: size twice", "", f"{LICENSE},buy,EURUSD,risk=1,vol_lots=2".encode(), "quantity",
     "given twice"),
    ("pc: fields not text", "", json.dumps({"key": LICENSE, "pineconnector": ["buy", 1]})
     .encode(), "pineconnector", "as text"),
    ("pc: size not a number", "", f"{LICENSE},buy,EURUSD,risk=lots".encode(), "quantity",
     "Expected"),
    ("3c: unknown action", "", _three_commas(action="open"), "action", "enter_long"),
    ("3c: quote amount", "", _three_commas(order={"amount": "100", "currency_type": "quote"}),
     "order.currency_type", "must be base"),
    ("3c: symbol twice", "", _three_commas(symbol="ETHUSDT"), "symbol", "given twice"),
    ("tp: percent target", f"/{SECRET}", _traderspost(takeProfit={"percent": 10}),
     "takeProfit", "relative to a fill"),
    ("tp: target not an object", f"/{SECRET}", _traderspost(takeProfit=110), "takeProfit",
     "an object"),
    ("tp: trailing stop", f"/{SECRET}",
     _traderspost(stopLoss={"type": "trailing_stop", "trailPercent": 1}), "stopLoss",
     "type must be stop"),
    ("tp: stop amount", f"/{SECRET}", _traderspost(stopLoss={"amount": 10}), "stopLoss",
     "relative to a fill"),
    ("tp: stop_limit order", f"/{SECRET}", _traderspost(orderType="stop_limit"), "orderType",
     "one of"),
    ("tp: dollar quantity", f"/{SECRET}", _traderspost(quantityType="dollar_amount"),
     "quantityType", "fixed_quantity"),
    ("tp: add", f"/{SECRET}", _traderspost(action="add"), "action", "no counterpart"),
    ("mixed", f"/{SECRET}", _traderspost(bot_uuid="x"), "body", "3Commas and TradersPost"),
]  # fmt: skip


async def test_every_refusal_names_its_field_and_stores_nothing(ingress: str, nc: Client) -> None:
    wrong = []
    for what, path, body, field, phrase in REFUSED:
        answer = await post(ingress, body, "/webhook" + path)
        errors = answer.json().get("errors", [])
        got = [(e["field"], phrase in e["reason"]) for e in errors]
        if answer.status_code != 422 or got != [(field, True)]:
            wrong.append((what, answer.status_code, errors))
    assert wrong == []
    assert await stored(nc) == 0


async def test_refusals_never_repeat_what_was_sent(ingress: str) -> None:
    """A PineConnector field may be anything the user typed: reasons name ours only."""
    marker = "zq9marker"
    for line in (f"{LICENSE},{marker},EURUSD", f"{LICENSE},buy,EURUSD,{marker}=1"):
        answer = await post(ingress, line.encode())
        assert answer.status_code == 422 and marker not in answer.text


# --- the secret: as strict for every format -------------------------------------------


async def test_a_wrong_secret_is_a_401_in_every_format_before_any_field(
    nats_server: NatsServer, nc: Client
) -> None:
    """Only our secret is configured: the license id alone admits nothing; a `secret=`
    decides for the line even when the license id is a configured secret; and an alert
    its mapping would refuse is a 401 first, as for our own names."""
    with_license = settings(nats_server.url, secrets=f"{SECRET},{LICENSE}")
    cases = [
        ("license only", "", f"{LICENSE},buy,EURUSD,risk=1".encode(), SECRET),
        ("wrong secret=", "", f"{LICENSE},buy,EURUSD,secret=not-the-secret".encode(), None),
        ("empty secret=", "", f"{LICENSE},buy,EURUSD,secret=".encode(), None),
        ("bad line, no secret", "", f"{LICENSE},closeall,EURUSD".encode(), SECRET),
        ("3c wrong secret", "", _three_commas(secret="not-the-secret"), None),
        ("3c bad, wrong secret", "", _three_commas(secret="nope-nope", action="x"), None),
        ("tp without path", "", _traderspost(), None),
        ("tp wrong path", "/not-the-secret", _traderspost(takeProfit=1), None),
    ]
    wrong = []
    for only in (SECRET, None):
        config = settings(nats_server.url) if only else with_license
        async with serving_ingress(config) as url:
            for what, path, body, needs in cases:
                if needs != only:
                    continue
                answer = await post(url, body, "/webhook" + path)
                if answer.status_code != 401:
                    wrong.append((what, answer.status_code, answer.text))
    assert wrong == []
    assert await stored(nc) == 0


async def test_the_path_secret_admits_a_line_and_its_license_is_not_kept(
    nats_server: NatsServer, nc: Client
) -> None:
    async with serving_ingress(settings(nats_server.url)) as url:
        line = f"{LICENSE},sell,EURUSD,risk=1".encode()
        assert (await post(url, line)).status_code == 401
        assert (await post(url, line, f"/webhook/{SECRET}")).status_code == 200
    alert, data = await last_alert(nc)
    assert (alert.symbol, alert.side, alert.quantity) == ("EURUSD", "sell", 1.0)
    assert LICENSE.encode() not in data and alert.extras == {}


async def test_a_secret_pasted_into_a_line_is_refused_unrepeated(
    nats_server: NatsServer, nc: Client
) -> None:
    """ingress.redact replaces the whole field that holds it: the line cannot be read."""
    async with serving_ingress(settings(nats_server.url)) as url:
        line = f"{LICENSE},buy,EURUSD,secret={SECRET},comment={SECRET}".encode()
        answer = await post(url, line)
    assert answer.status_code == 422 and SECRET not in answer.text
    assert answer.json()["errors"] == [
        {"field": "pineconnector", "reason": "a parameter must not hold a secret"}
    ]
    assert await stored(nc) == 0


# --- what is not a line stays refused as before -----------------------------------------


async def test_text_that_is_not_a_line_is_still_a_json_error(ingress: str, nc: Client) -> None:
    bodies = [
        (SAMPLES / "plain-text.txt").read_bytes(),
        f"{LICENSE}\n,buy,EURUSD".encode(),  # two lines
        f"{LICENSE},buy,EURUSD,comment={'x' * 4096}".encode(),  # longer than a line
        b"60123456789,buy,EUR\xffUSD",  # not UTF-8
        b"LicenseID,buy,EURUSD,risk=1",  # the docs' placeholder, not a license id
        b"123",  # a JSON value
    ]
    for body in bodies:
        answer = await post(ingress, body)
        assert answer.status_code == 422
        assert answer.json()["errors"][0]["field"] == "body"
        assert "JSON" in answer.json()["errors"][0]["reason"]
    assert await stored(nc) == 0


# --- sides that depend on the position after the order ----------------------------------


@pytest.mark.parametrize(
    ("body", "side"),
    [
        (_traderspost(action="buy", sentiment="flat"), "close"),
        (_traderspost(action="sell", sentiment="bearish"), "sell"),
        (_traderspost(action="exit"), "close"),
        (_three_commas(action="sell", strategy_info={"market_position": "flat"}), "close"),
        (_three_commas(action="sell", strategy_info={"market_position": "short"}), "sell"),
        (_three_commas(action="enter_short"), "sell"),
        (_three_commas(action="exit_short"), "close"),
        (f"{LICENSE},short,EURUSD,secret={SECRET}".encode(), "sell"),
        (f"{LICENSE},closeshort,EURUSD,secret={SECRET}".encode(), "close"),
        (f"{LICENSE},sellstop,EURUSD,price=1.05,secret={SECRET}".encode(), "sell"),
    ],
)
async def test_side(ingress: str, nc: Client, body: bytes, side: str) -> None:
    path = f"/webhook/{SECRET}" if body.startswith(b'{"ticker"') else "/webhook"
    assert (await post(ingress, body, path)).status_code == 200
    alert, _ = await last_alert(nc)
    assert alert.side == side
    if b"sellstop" in body:
        assert (alert.order_type, alert.stop_price) == ("stop", 1.05)
