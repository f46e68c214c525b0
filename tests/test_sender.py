"""Sender verification over real HTTP (uvicorn on a free port) against a real nats-server:
the IP allowlist and trusted proxies, a proxy's client-certificate header, rate limits.
Every refusal is checked for its status, its JSON reason, and that nothing was stored."""

from __future__ import annotations

from typing import cast

import httpx
import pytest
from litestar.types import Scope
from nats.aio.client import Client

from ingress.access import TRADINGVIEW_IPS, parse_networks
from ingress.guard import forwarded_for, source
from tests.ingress_support import TV_IP, alert, serving_ingress, settings, stored
from tests.support import NatsServer

TV_DN = "CN=TradingView Webhooks,O=TradingView\\, Inc.,C=US"
TV_LEGACY = "/C=US/O=TradingView, Inc./CN=TradingView Webhooks"  # HAProxy's default form
TWO_CNS = "CN=TradingView Webhooks,CN=x,O=TradingView\\, Inc."
HEADER = "X-SSL-Client-S-DN"


async def post(url: str, body: bytes, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.post(f"{url}/webhook", content=body, headers=headers)


def refused(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"ok": False, "error": reason}


# --- IP allowlist and trusted proxies --------------------------------------------------


async def test_allowlist_refuses_an_address_not_on_it(nats_server: NatsServer, nc: Client) -> None:
    async with serving_ingress(settings(nats_server.url, allow_ips="tradingview")) as url:
        refused(await post(url, alert()), 403, "source address not allowed")
        # Health probes are not TradingView: they are never refused.
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/healthz")).status_code == 200
    assert await stored(nc) == 0


async def test_allowlist_admits_an_address_on_it(nats_server: NatsServer, nc: Client) -> None:
    async with serving_ingress(settings(nats_server.url, allow_ips="10.0.0.0/8,127.0.0.1")) as url:
        assert (await post(url, alert())).status_code == 200
    assert await stored(nc) == 1


@pytest.mark.parametrize(
    "spoof",
    [
        {"X-Forwarded-For": TV_IP},
        {"Forwarded": f"for={TV_IP}"},
        {"X-Forwarded-For": f"{TV_IP}, {TV_IP}", "X-Real-IP": TV_IP},
    ],
)
async def test_a_forwarding_header_from_an_untrusted_peer_is_ignored(
    nats_server: NatsServer, nc: Client, spoof: dict[str, str]
) -> None:
    # 127.0.0.1 is not a trusted proxy here: whatever it claims, it is 127.0.0.1.
    config = settings(nats_server.url, allow_ips="tradingview", trusted_proxies="10.0.0.0/8")
    async with serving_ingress(config) as url:
        refused(await post(url, alert(), **spoof), 403, "source address not allowed")
    assert await stored(nc) == 0


@pytest.mark.parametrize(
    ("header", "value", "status"),
    [
        ("X-Forwarded-For", TV_IP, 200),
        # The client wrote the left part; the proxy appended the address it saw.
        ("X-Forwarded-For", f"{TV_IP}, 203.0.113.9", 403),
        ("X-Forwarded-For", f"203.0.113.9, {TV_IP}", 200),
        # 10.1.2.3 is an inner trusted proxy: skipped, the hop before it is the sender.
        ("X-Forwarded-For", f"{TV_IP}, 10.1.2.3", 200),
        ("X-Forwarded-For", "not-an-address", 403),
        ("X-Forwarded-For", f"{TV_IP}, unknown", 403),
        # Only the configured header counts (X-Forwarded-For here).
        ("Forwarded", f"for={TV_IP}", 403),
    ],
)
async def test_a_trusted_proxy_reports_the_sender(
    nats_server: NatsServer, nc: Client, header: str, value: str, status: int
) -> None:
    config = settings(
        nats_server.url, allow_ips="tradingview", trusted_proxies="127.0.0.1/32,10.0.0.0/8"
    )
    async with serving_ingress(config) as url:
        response = await post(url, alert(), **{header: value})
    assert response.status_code == status, response.text
    assert await stored(nc) == (1 if status == 200 else 0)


async def test_the_forwarded_header_when_configured(nats_server: NatsServer, nc: Client) -> None:
    config = settings(
        nats_server.url,
        allow_ips="tradingview",
        trusted_proxies="127.0.0.1/32",
        proxy_header="Forwarded",
    )
    async with serving_ingress(config) as url:
        ok = await post(url, alert(), Forwarded=f'for="{TV_IP}:4711";proto=https')
        assert ok.status_code == 200, ok.text
        ignored = await post(url, alert(qty=2), **{"X-Forwarded-For": TV_IP})
        refused(ignored, 403, "source address not allowed")
    assert await stored(nc) == 1


def _scope(peer: str, *headers: tuple[bytes, bytes]) -> Scope:
    return cast("Scope", {"type": "http", "client": (peer, 1234), "headers": list(headers)})


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        ("::ffff:52.89.214.238", (), (TV_IP, False)),  # IPv4-mapped: the IPv4 address
        ("10.0.0.1", ((b"x-forwarded-for", b"[2001:db8::1]:80"),), ("2001:db8::1", True)),
        ("10.0.0.1", ((b"x-forwarded-for", b"1.2.3.4:5678"),), ("1.2.3.4", True)),
        # Two header lines are one list, in order.
        ("10.0.0.1", ((b"x-forwarded-for", b"9.9.9.9"), (b"x-forwarded-for", b"1.2.3.4")),
         ("1.2.3.4", True)),
        ("10.0.0.1", (), ("10.0.0.1", True)),  # a trusted proxy that says nothing: itself
        ("10.0.0.1", ((b"x-forwarded-for", b"10.0.0.2"),), ("10.0.0.2", True)),  # all trusted
        ("testclient", (), (None, False)),
    ],
)  # fmt: skip
def test_source_address_parsing(
    peer: str, headers: tuple[tuple[bytes, bytes], ...], expected: tuple[str | None, bool]
) -> None:
    trusted = parse_networks(["10.0.0.0/8"])
    address, via_proxy = source(_scope(peer, *headers), trusted, b"x-forwarded-for")
    assert (str(address) if address else None, via_proxy) == expected


def test_forwarded_header_elements() -> None:
    header = b'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711", by=x'
    found = forwarded_for([(b"forwarded", header)], b"forwarded")
    assert [str(a) if a else None for a in found] == ["192.0.2.60", "2001:db8:cafe::17", None]


def test_the_tradingview_preset() -> None:
    assert [str(n.network_address) for n in parse_networks(["tradingview"])] == list(
        TRADINGVIEW_IPS
    )


# --- the client certificate, reported by a trusted proxy ------------------------------


@pytest.mark.parametrize(
    ("trusted", "headers", "status", "reason"),
    [
        ("127.0.0.1/32", [("X-SSL-Client-S-DN", TV_DN)], 200, ""),
        ("127.0.0.1/32", [(HEADER, TV_LEGACY)], 200, ""),
        ("127.0.0.1/32", [("X-SSL-Client-S-DN", "CN=Mallory,O=TradingView\\, Inc.")], 403,
         "client certificate subject not allowed"),
        ("127.0.0.1/32", [(HEADER, TWO_CNS)], 403, "client certificate subject not allowed"),
        ("127.0.0.1/32", [], 403, "client certificate required"),
        ("127.0.0.1/32", [("X-SSL-Client-S-DN", TV_DN), ("X-SSL-Client-S-DN", TV_DN)], 403,
         "client certificate header sent more than once"),
        # The same header from a peer that is not a trusted proxy is ignored.
        ("10.0.0.0/8", [("X-SSL-Client-S-DN", TV_DN)], 403, "client certificate required"),
    ],
)  # fmt: skip
async def test_client_certificate_subject_from_a_trusted_proxy(
    nats_server: NatsServer,
    nc: Client,
    trusted: str,
    headers: list[tuple[str, str]],
    status: int,
    reason: str,
) -> None:
    config = settings(
        nats_server.url,
        trusted_proxies=trusted,
        require_client_cert="true",
        client_cert_header="X-SSL-Client-S-DN",
    )
    async with serving_ingress(config) as url, httpx.AsyncClient(timeout=5) as client:
        response = await client.post(f"{url}/webhook", content=alert(), headers=headers)
    if status == 200:
        assert response.status_code == 200, response.text
    else:
        refused(response, status, reason)
    assert await stored(nc) == (1 if status == 200 else 0)


# --- rate limits ---------------------------------------------------------------------------


async def test_rate_limit_per_source(nats_server: NatsServer, nc: Client) -> None:
    config = settings(nats_server.url, rate_limit="3/minute", rate_limit_exempt="none")
    async with serving_ingress(config) as url:
        statuses = [(await post(url, alert(qty=n))).status_code for n in range(1, 4)]
        assert statuses == [200, 200, 200]
        limited = await post(url, alert(qty=4))
        refused(limited, 429, "too many requests from this address")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        # A refused request is counted before its body is read: a valid secret changes nothing.
        refused(await post(url, alert(qty=5)), 429, "too many requests from this address")
    assert await stored(nc) == 3


async def test_tradingview_is_exempt_from_the_source_limit_by_default(
    nats_server: NatsServer, nc: Client
) -> None:
    config = settings(nats_server.url, rate_limit="2/minute", trusted_proxies="127.0.0.1/32")
    async with serving_ingress(config) as url:
        # TradingView resends a 5xx up to 3 times, and one alert may fire 15 times in 3 min.
        for n in range(1, 7):
            response = await post(url, alert(qty=n), **{"X-Forwarded-For": TV_IP})
            assert response.status_code == 200, (n, response.text)
        other = [
            (await post(url, alert(qty=10 + n), **{"X-Forwarded-For": "203.0.113.9"})).status_code
            for n in range(3)
        ]
        assert other == [200, 200, 429]
    assert await stored(nc) == 8


async def test_rate_limit_per_account_counts_only_authenticated_alerts(
    nats_server: NatsServer, nc: Client
) -> None:
    config = settings(nats_server.url, account_rate_limit="2/minute")
    async with serving_ingress(config) as url:
        # Strangers without the secret cannot use up an account's allowance.
        for n in range(5):
            refused(await post(url, alert(secret="wrong-secret", qty=n + 1)), 401,
                    "missing or wrong secret")  # fmt: skip
        assert (await post(url, alert(qty=1))).status_code == 200
        assert (await post(url, alert(qty=2))).status_code == 200
        limited = await post(url, alert(qty=3))
        refused(limited, 429, "too many alerts for this account")
        assert int(limited.headers["retry-after"]) >= 1
        # Another account has its own allowance.
        assert (await post(url, alert(qty=3, account="other"))).status_code == 200
    assert await stored(nc) == 3
