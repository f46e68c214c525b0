"""How uvicorn serves the ingress: h11 with a header cap, and optionally HTTPS that
requires TradingView's client certificate.

uvicorn (0.54) verifies a client certificate against `ssl_ca_certs` during the
handshake but does not pass it to the app: the ASGI `tls` extension is not filled
in. A CA check alone cannot tell TradingView's certificate from any other the same
CA signed, so `ClientCertProtocol` reads the verified peer certificate when the
connection is made and puts its subject into each request's scope as the `tls`
extension (`client_cert_name`, RFC 4514), where `ingress.guard` checks it.
It can go once uvicorn fills in the extension itself.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ops.access import format_subject

if TYPE_CHECKING:
    import asyncio

    from litestar.types import ASGIApp, Receive, Scope, Send

    from ops.settings import IngressSettings


class ClientCertProtocol(H11Protocol):
    """h11, plus the verified client certificate's subject in the ASGI `tls` extension."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Read the peer certificate once per connection (the handshake verified it)."""
        super().connection_made(transport)
        cert = transport.get_extra_info("peercert")
        name = format_subject(cert["subject"]) if cert and cert.get("subject") else None
        app: ASGIApp = self.app

        async def with_certificate(scope: Scope, receive: Receive, send: Send) -> None:
            extensions = dict(scope.get("extensions") or {})
            extensions["tls"] = {"client_cert_name": name, "client_cert_error": None}
            scope["extensions"] = extensions
            await app(scope, receive, send)

        self.app = with_certificate


def uvicorn_options(settings: IngressSettings) -> dict[str, Any]:
    """The keyword arguments of `uvicorn.Config` for these settings."""
    options: dict[str, Any] = {
        "host": settings.http_host,
        "port": settings.http_port,
        # h11 explicitly: its cap on the request line plus headers is the one configured.
        "http": "h11",
        "h11_max_incomplete_event_size": settings.max_header_bytes or None,
        # uvicorn's own default believes X-Forwarded-For from 127.0.0.1 (or whatever
        # FORWARDED_ALLOW_IPS says) and rewrites the client address before the app sees
        # it; ingress.guard decides instead, from ALERTBRIDGE_TRUSTED_PROXIES only.
        "proxy_headers": False,
        "log_config": None,  # keep ops.logs' handler
        "log_level": "warning",
        "access_log": False,  # an access log would print a secret carried in the URL path
        "timeout_graceful_shutdown": 5,
    }
    if settings.tls_cert is not None:
        options |= {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
        if settings.tls_client_ca is not None:
            options["ssl_ca_certs"] = settings.tls_client_ca
            options["ssl_cert_reqs"] = (
                ssl.CERT_REQUIRED if settings.require_client_cert else ssl.CERT_OPTIONAL
            )
            if settings.require_client_cert:
                options["http"] = ClientCertProtocol
    return options


def server(app: ASGIApp, settings: IngressSettings) -> uvicorn.Server:
    """A uvicorn server for `app`, configured by `settings`."""
    return uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings)))
