"""How uvicorn serves the ingress: httptools on uvloop, a cap on the request head, and
optionally HTTPS that requires TradingView's client certificate.

httptools (llhttp) parses a request in C, about twice as fast as h11 here
(docs/performance.md), but has no cap on the request line plus headers, so
`IngressProtocol` counts them as they are parsed: past `max_header_bytes` the
sender gets a 431 and the connection closes, whether the head is complete or
still trickling in; nothing of it reaches the app. The body deadline
(`body_timeout`, a slow-loris body holds nothing for long) lives here too: a timer
only for a body that did not arrive with its headers, where an `asyncio.timeout`
around every read would cost each request (docs/performance.md).

uvicorn (0.54) verifies a client certificate against `ssl_ca_certs` during the
handshake but does not pass it to the app: the ASGI `tls` extension is not filled
in. A CA check alone cannot tell TradingView's certificate from any other the same
CA signed, so the protocol reads the verified peer certificate when the connection
is made and puts its subject into each request's scope as the `tls` extension
(`client_cert_name`, RFC 4514), where `ingress.guard` checks it.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ingress.answers import refusal_bytes
from ops.access import format_subject

if TYPE_CHECKING:
    import asyncio

    from litestar.types import ASGIApp, Receive, Scope, Send

    from ops.settings import IngressSettings


class IngressProtocol(HttpToolsProtocol):
    """httptools with a cap on the request head (431) and a deadline for the body (408),
    plus the client certificate."""

    # Set by `protocol_for`: bytes of request line + headers (0: no cap), and seconds
    # from the end of the headers to the end of the body (0: no deadline).
    max_head = 0
    body_timeout = 0.0

    _head = 0  # bytes of the request line and headers parsed so far
    _unparsed = 0  # bytes received while a head is incomplete (its last line is pending)
    _mid_head = False
    _refused = False
    _in_body = False  # the headers are in, the body is not yet
    _body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Read the peer certificate once per connection (the handshake verified it)."""
        super().connection_made(transport)
        cert = transport.get_extra_info("peercert")
        if cert is None:
            return
        name = format_subject(cert["subject"]) if cert.get("subject") else None
        app: ASGIApp = self.app

        async def with_certificate(scope: Scope, receive: Receive, send: Send) -> None:
            extensions = dict(scope.get("extensions") or {})
            extensions["tls"] = {"client_cert_name": name, "client_cert_error": None}
            scope["extensions"] = extensions
            await app(scope, receive, send)

        self.app = with_certificate

    def data_received(self, data: bytes) -> None:
        """Nothing more is parsed once the head was refused (the connection is closing).

        A body still incomplete at the end of what arrived gets its deadline now: the
        usual request arrives whole, and costs no timer.
        """
        if self._refused:
            return
        super().data_received(data)
        if self._mid_head and self.max_head and not self._refused:
            # httptools hands over a header only once the next one starts: a head that
            # never ends would otherwise be buffered without bound.
            self._unparsed += len(data)
            if self._unparsed > self.max_head:
                self._refuse(431, f"request line and headers over {self.max_head} bytes")
                return
        if self._in_body and self._body_timer is None and self.body_timeout > 0:
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_late)

    def connection_lost(self, exc: Exception | None) -> None:
        """No deadline outlives its connection."""
        self._stop_body_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        """A new request: its head has no bytes yet."""
        self._head = self._unparsed = 0
        self._mid_head = True
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        """Count the target (it may come in pieces)."""
        if self._count(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count a header line as it is on the wire: `name: value` and CRLF."""
        if self._count(len(name) + len(value) + 4):
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Start the request, unless its head was refused."""
        self._mid_head = False
        if not self._refused:
            self._in_body = True
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        """Pass the body on, unless the head was refused."""
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        """Finish the request, unless the head was refused."""
        if not self._refused:
            self._in_body = False
            self._stop_body_timer()
            super().on_message_complete()

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_late(self) -> None:
        """The body missed its deadline: 408, and the connection closes (the app sees
        a disconnect and answers nothing)."""
        self._body_timer = None
        if self._in_body and not self.transport.is_closing():
            self._refuse(408, f"body not received within {self.body_timeout:g} s")

    def _count(self, size: int) -> bool:
        """Add to the head; False (and a 431 sent, the connection closing) past the cap."""
        if self._refused:
            return False
        self._head += size
        if not self.max_head or self._head <= self.max_head:
            return True
        self._refuse(431, f"request line and headers over {self.max_head} bytes")
        return False

    def _refuse(self, status: int, error: str) -> None:
        """Answer `status` and close; nothing more of this connection is parsed."""
        self._refused = True
        self.transport.write(refusal_bytes(status, error))
        self.transport.close()


def protocol_for(max_head: int, body_timeout: float) -> type[IngressProtocol]:
    """The protocol class with these limits (uvicorn instantiates it per connection)."""
    limits = {"max_head": max_head, "body_timeout": body_timeout}
    return type("IngressProtocol", (IngressProtocol,), limits)


def uvicorn_options(settings: IngressSettings) -> dict[str, Any]:
    """The keyword arguments of `uvicorn.Config` for these settings."""
    options: dict[str, Any] = {
        "host": settings.http_host,
        "port": settings.http_port,
        "http": protocol_for(settings.max_header_bytes, settings.body_timeout),
        "loop": "uvloop",
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
    return options


def server(app: ASGIApp, settings: IngressSettings) -> uvicorn.Server:
    """A uvicorn server for `app`, configured by `settings`."""
    return uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings)))


def listening_socket(settings: IngressSettings) -> socket.socket | None:
    """With `http_reuse_port`, the port bound with SO_REUSEPORT, so that other ingress
    processes can bind it too (None: uvicorn binds it alone)."""
    if not settings.http_reuse_port:
        return None
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.http_host, settings.http_port))
    sock.set_inheritable(True)
    return sock
