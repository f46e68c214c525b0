"""How uvicorn serves the ingress: httptools on uvloop, a cap on the request head, and
optionally HTTPS that requires TradingView's client certificate.

httptools (llhttp) parses a request in C, about twice as fast as h11 here
(docs/performance.md), but has no cap on the request line plus headers, so
`IngressProtocol` counts them as they are parsed: past `max_header_bytes` the
sender gets a 431 and the connection closes, whether the head is complete or
still trickling in; nothing of it reaches the app. The request deadline
(`body_timeout`: slow-loris headers or body, or a connection that sends nothing,
hold nothing for long) lives here too: a timer per new connection and for a
request that did not arrive in one piece, where an `asyncio.timeout` around every
read would cost each request (docs/performance.md).

Everything it uses of uvicorn's internals goes through `ingress.uvicorn_compat`.

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

from ingress import refusals
from ingress.access import format_subject
from ingress.answers import refusal_bytes
from ingress.uvicorn_compat import HttpToolsProtocol, answer_begun, answer_pending

if TYPE_CHECKING:
    import asyncio

    from litestar.types import ASGIApp, Receive, Scope, Send

    from ingress.settings import IngressSettings


class IngressProtocol(HttpToolsProtocol):
    """httptools with a cap on the request head (431) and a deadline for the request
    (408), plus the client certificate."""

    # Set by `protocol_for`: bytes of request line + headers (0: no cap), and seconds
    # a request may take to arrive, head and body (0: no deadline).
    max_head = 0
    body_timeout = 0.0

    _head = 0  # bytes of the request line and headers parsed so far
    _unparsed = 0  # bytes received while a head or trailer line is incomplete
    _mid_head = False
    _began = False  # a request began in the data being parsed
    _fed_body = False  # body bytes came in the data being parsed
    _body_seen = False  # the request's body has begun (what follows may be trailers)
    _ended = False  # a request ended in the data being parsed
    _refused = False
    _in_body = False  # the headers are in, the body is not yet
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """The first request's deadline starts now (uvicorn's keep-alive timeout covers
        only the time between requests); read the peer certificate once per connection
        (the handshake verified it)."""
        super().connection_made(transport)
        if self.body_timeout > 0:
            self._deadline = self.loop.call_later(self.body_timeout, self._late)
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

        httptools hands over a header (or a chunked trailer) only once its line ends:
        bytes that arrive while one is pending are counted against the head cap, so a
        line that never ends is not buffered without bound. (Data in which one request
        ended and the next began, pipelined, is not counted: the cap on what is
        parsed, `_count`, still covers the new head.) A request still incomplete at the end of what
        arrived gets its deadline now (the usual one arrives whole and costs no timer),
        and so do bytes that begin no request (bare CRLFs would otherwise hold an idle
        keep-alive connection forever).
        """
        if self._refused:
            return
        self._began = self._fed_body = self._ended = False
        super().data_received(data)
        if self._refused:
            return
        trailer = self._in_body and self._body_seen and not self._fed_body
        if (self._mid_head or trailer) and not (self._began and self._ended) and self.max_head:
            self._unparsed += len(data)
            if self._unparsed > self.max_head:
                self._refuse(431, f"request line and headers over {self.max_head} bytes")
                return
        idle = not (self._began or self._ended)  # blank lines between requests, or nothing
        if (
            self._deadline is None
            and self.body_timeout
            and (self._in_body or self._mid_head or idle)
        ):
            self._deadline = self.loop.call_later(self.body_timeout, self._late)

    def connection_lost(self, exc: Exception | None) -> None:
        """No deadline outlives its connection."""
        self._stop_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        """A new request: its head has no bytes yet."""
        self._head = self._unparsed = 0
        self._mid_head = self._began = True
        self._body_seen = False
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
            self._fed_body = self._body_seen = True
            self._unparsed = 0
            super().on_body(body)

    def on_message_complete(self) -> None:
        """Finish the request, unless the head was refused."""
        if not self._refused:
            self._in_body = False
            self._ended = True
            self._stop_deadline()
            super().on_message_complete()

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        """The request missed its deadline: 408, and the connection closes (an app
        already reading the body sees a disconnect and answers nothing)."""
        self._deadline = None
        if self.transport.is_closing():
            return
        if answer_pending(self) and not self._in_body:
            # The app still answers an earlier request (this one waits behind it,
            # pipelined): its time starts once that answer is out.
            self._deadline = self.loop.call_later(self.body_timeout, self._late)
            return
        if self._in_body and answer_begun(self):
            # Answered already (an early refusal); the rest of its body never came.
            self._refused = True
            self.transport.close()
        elif self._in_body:
            self._refuse(408, f"body not received within {self.body_timeout:g} s")
        else:  # nothing yet, headers still arriving, or only blank lines
            self._refuse(408, f"request not received within {self.body_timeout:g} s")

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
        """Answer `status` and close; nothing more of this connection is parsed.

        Logged with the TCP peer as the source: the head that would name the sender
        behind a trusted proxy is what is refused (or still missing)."""
        self._refused = True
        refusals.note(status, error, source=self.client[0] if self.client else None)
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
        "log_config": None,  # keep ops.platform.logs' handler
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
