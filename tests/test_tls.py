"""HTTPS served by `python -m ingress` itself, requiring TradingView's client certificate:
real TLS handshakes with certificates from a CA made here, against a real nats-server."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from tests.ingress_support import (
    Issued,
    Process,
    TestCA,
    alert,
    ingress_env,
    ingress_process,
    stored,
    subject,
    wait_ready,
)
from tests.support import NatsServer


@dataclass
class Pki:
    ca: TestCA
    server: Issued
    tradingview: Issued  # the right subject, from the right CA
    mallory: Issued  # the right CA, another subject
    forged: Issued  # the right subject, from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other = TestCA(directory, "client-ca"), TestCA(directory, "other-ca")
    server_ca = TestCA(directory, "server-ca")
    return Pki(
        ca=server_ca,
        server=server_ca.issue("server", subject("127.0.0.1", "alertbridge"), server=True),
        tradingview=ca.issue("tv", subject("TradingView Webhooks", "TradingView, Inc.")),
        mallory=ca.issue("mallory", subject("Mallory Webhooks", "TradingView, Inc.")),
        forged=other.issue("forged", subject("TradingView Webhooks", "TradingView, Inc.")),
    )


@pytest.fixture
def https_ingress(
    pki: Pki, nats_server: NatsServer, nc: Client, tmp_path: Path
) -> Iterator[Process]:
    client_ca = pki.tradingview.cert.parent / "client-ca.pem"
    env = ingress_env(
        nats_server.url,
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        tls_client_ca=str(client_ca),
        require_client_cert="true",
    )
    with ingress_process(env, tmp_path / "ingress.log") as process:
        yield process


def context(pki: Pki, client: Issued | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


async def post(process: Process, ctx: ssl.SSLContext, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(verify=ctx, timeout=5) as client:
        return await client.post(f"https://127.0.0.1:{process.port}/webhook", content=body)


async def test_tradingview_certificate_is_admitted(
    https_ingress: Process, pki: Pki, nc: Client
) -> None:
    ctx = context(pki, pki.tradingview)
    async with httpx.AsyncClient(verify=ctx, timeout=5) as client:
        await wait_ready(f"https://127.0.0.1:{https_ingress.port}", client)
    response = await post(https_ingress, ctx, alert())
    assert response.status_code == 200, (response.text, https_ingress.output())
    assert await stored(nc) == 1


async def test_another_subject_from_the_same_ca_is_403(
    https_ingress: Process, pki: Pki, nc: Client
) -> None:
    ctx = context(pki, pki.mallory)
    async with httpx.AsyncClient(verify=ctx, timeout=5) as client:
        await wait_ready(f"https://127.0.0.1:{https_ingress.port}", client)
    response = await post(https_ingress, ctx, alert())
    assert response.status_code == 403, https_ingress.output()
    assert response.json() == {"ok": False, "error": "client certificate subject not allowed"}
    assert await stored(nc) == 0


@pytest.mark.parametrize("who", ["none", "forged"])
async def test_no_certificate_or_another_ca_fails_the_handshake(
    https_ingress: Process, pki: Pki, nc: Client, who: str
) -> None:
    good = context(pki, pki.tradingview)
    async with httpx.AsyncClient(verify=good, timeout=5) as client:
        await wait_ready(f"https://127.0.0.1:{https_ingress.port}", client)
    ctx = context(pki, None if who == "none" else pki.forged)
    # TLS 1.3 may finish the client's side of the handshake before the server refuses:
    # the refusal then shows on the first read. Either way no HTTP answer comes back.
    with pytest.raises(httpx.TransportError):
        await post(https_ingress, ctx, alert())
    assert await stored(nc) == 0


async def test_plain_http_to_the_https_port_gets_nothing(
    https_ingress: Process, pki: Pki, nc: Client
) -> None:
    good = context(pki, pki.tradingview)
    async with httpx.AsyncClient(verify=good, timeout=5) as client:
        await wait_ready(f"https://127.0.0.1:{https_ingress.port}", client)
    async with httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(httpx.TransportError):
            await client.post(f"http://127.0.0.1:{https_ingress.port}/webhook", content=alert())
    assert await stored(nc) == 0
