"""What is checked before and while a webhook's body is read, cheapest first.

    request line and headers over the cap   431    (ingress.serve, before any app)
    Content-Length over the cap             413
    source address not in the allowlist     403
    client certificate missing or wrong     403
    too many requests from this source      429 + Retry-After
    body slower than the deadline           408    (ingress.serve: a slow body holds nothing)
    body over the cap while it streams      413    (up to 4x the cap is drained first)

The size caps and the body deadline are on by default and cost a pass over the
headers and a timer; every other check costs nothing unless configured. Only the
webhook routes are guarded: health probes and metrics scrapers are not TradingView.
A refusal closes the connection rather than draining a body nobody wants.

The source address is the TCP peer, unless that peer is a trusted proxy: then it
is the right-most address in the proxy's forwarding header that is not itself a
trusted proxy (everything to the left of it was written by the client and can be
anything). A forwarding header from anyone else is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network, ip_address
from typing import TYPE_CHECKING, Final

from ingress.access import (
    Address,
    Network,
    Subject,
    contains,
    parse_subject,
    subject_matches,
)
from ingress.answers import Reply, refusal_reply
from ingress.ratelimit import RateLimit

if TYPE_CHECKING:
    from collections.abc import Iterable

    from litestar.types import Receive, Scope

    from ingress.settings import IngressSettings

# Rate limits key IPv6 senders by their /64: one host usually owns the whole of one.
_IPV6_RATE_PREFIX: Final = 64
# A body up to this many times the cap is read and dropped before answering 413.
_DRAIN_FACTOR: Final = 4


@dataclass(frozen=True, slots=True)
class Policy:
    """The checks in force, parsed once from the settings."""

    max_body: int
    body_timeout: float = 0.0
    allow: tuple[Network, ...] | None = None  # None: every address may send
    trusted: tuple[Network, ...] = ()
    proxy_header: bytes = b"x-forwarded-for"
    subject: Subject | None = None  # None: no client certificate needed
    cert_header: bytes | None = None
    rate: RateLimit | None = None
    exempt: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: IngressSettings) -> Policy:
        """The checks the settings ask for, in the values the settings parsed."""
        header = settings.client_cert_header
        return cls(
            max_body=settings.max_body_bytes,
            body_timeout=settings.body_timeout,
            allow=settings.allowed,
            trusted=settings.proxies,
            proxy_header=settings.proxy_header.lower().encode(),
            subject=settings.certificate_subject if settings.require_client_cert else None,
            cert_header=header.lower().encode() if header else None,
            rate=RateLimit(settings.rate_limit, "source") if settings.rate_limit else None,
            exempt=settings.exempt,
        )

    @property
    def needs_source(self) -> bool:
        """Whether any check needs to know who is sending."""
        return self.allow is not None or self.subject is not None or self.rate is not None


class RefusedError(Exception):
    """A check failed: answer `status` with `error` (and `headers`) and close."""

    def __init__(self, status: int, error: str, headers: tuple[tuple[bytes, bytes], ...] = ()):
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = headers

    def reply(self) -> Reply:
        """The JSON refusal, with `Connection: close` (the body may be unread)."""
        return refusal_reply(self.status, self.error, headers=self.headers, close=True)


class DisconnectedError(Exception):
    """The sender went away before its body arrived: nobody to answer."""


class SenderGuard:
    """The checks of one `Policy` before and while the body is read; see the module
    docstring. Each raises `RefusedError` (or `DisconnectedError`)."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        # With a body deadline, a body up to DRAIN_FACTOR x the cap is read (and
        # dropped) before the 413: closing on unread bytes resets the connection,
        # and the sender would lose the answer with it.
        self._drain = _DRAIN_FACTOR if policy.body_timeout > 0 else 1

    async def check(self, scope: Scope) -> None:
        """What the request head tells: the declared size, then who is sending."""
        policy = self._policy
        _check_length(scope, policy.max_body, self._drain)
        if policy.needs_source:
            await self._check_sender(scope)

    async def body(self, receive: Receive) -> bytes:
        """The whole body, within the cap."""
        policy = self._policy
        return await read_body(receive, policy.max_body, self._drain)

    def sender(self, scope: Scope) -> str | None:
        """The source address as the checks see it (for a log line); None when unknown."""
        policy = self._policy
        address, _ = source(scope, policy.trusted, policy.proxy_header)
        return None if address is None else str(address)

    async def _check_sender(self, scope: Scope) -> None:
        policy = self._policy
        address, via_proxy = source(scope, policy.trusted, policy.proxy_header)
        if policy.allow is not None and (address is None or not contains(policy.allow, address)):
            raise RefusedError(403, "source address not allowed")
        if policy.subject is not None:
            _check_certificate(scope, policy.subject, policy.cert_header if via_proxy else None)
        if policy.rate is not None and not (
            address is not None and contains(policy.exempt, address)
        ):
            wait = await policy.rate.wait(_rate_key(address))
            if wait is not None:
                raise RefusedError(
                    429, "too many requests from this address", ((b"retry-after", b"%d" % wait),)
                )


def source(
    scope: Scope, trusted: tuple[Network, ...], header: bytes
) -> tuple[Address | None, bool]:
    """The sender's address (None when unknowable) and whether a trusted proxy relayed it."""
    client = scope.get("client")
    peer = _address(client[0]) if client else None
    if peer is None or not contains(trusted, peer):
        return peer, False
    hops = forwarded_for(scope["headers"], header)
    for hop in reversed(hops):
        if hop is None or not contains(trusted, hop):
            return hop, True
    return (hops[0] if hops else peer), True


def forwarded_for(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[Address | None]:
    """The addresses in every `name` header line, left to right (None: not an address)."""
    text = ",".join(value.decode("latin-1") for key, value in headers if key == name)
    if not text.strip():
        return []
    if name == b"forwarded":
        return [_address(_forwarded_for(element)) for element in text.split(",")]
    return [_address(hop) for hop in text.split(",")]


def _forwarded_for(element: str) -> str:
    """RFC 7239: `for=192.0.2.60;proto=https` or `for="[2001:db8::1]:4711"`."""
    for pair in element.split(";"):
        key, _, value = pair.partition("=")
        if key.strip().lower() == "for":
            return value
    return ""


def _address(text: str) -> Address | None:
    """An IP from `1.2.3.4`, `1.2.3.4:80`, `[::1]:80` or `::1`; IPv4-mapped IPv6 as IPv4."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _rate_key(address: Address | None) -> str:
    if address is None:
        return "unknown"
    if isinstance(address, IPv6Address):
        return str(IPv6Network((address, _IPV6_RATE_PREFIX), strict=False))
    return str(address)


def _check_length(scope: Scope, max_body: int, drain: int) -> None:
    """A declared body beyond what is drained is refused before it is read."""
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > max_body * drain:
            raise RefusedError(413, f"body over {max_body} bytes")


def _check_certificate(scope: Scope, required: Subject, proxy_header: bytes | None) -> None:
    """The verified client certificate's subject: from our own TLS, or a trusted proxy's header.

    Our TLS puts it in the ASGI `tls` extension (ingress.serve); `proxy_header` is None
    unless the direct peer is a trusted proxy.
    """
    tls = (scope.get("extensions") or {}).get("tls") or {}
    found = tls.get("client_cert_name")
    name = found if isinstance(found, str) else None
    if name is None and proxy_header is not None:
        values = [v for k, v in scope["headers"] if k == proxy_header]
        if len(values) > 1:
            raise RefusedError(403, "client certificate header sent more than once")
        name = values[0].decode("utf-8", "replace") if values else None
    if not name:
        raise RefusedError(403, "client certificate required")
    try:
        presented = parse_subject(name)
    except ValueError:
        presented = frozenset()
    if not subject_matches(required, presented):
        raise RefusedError(403, "client certificate subject not allowed")


async def read_body(receive: Receive, limit: int, drain: int) -> bytes:
    """The whole body within `limit` bytes (its deadline is the protocol's: ingress.serve).

    Past `limit` the rest is read and dropped, up to `drain` x `limit`, so that
    the 413 reaches the sender; past that the connection is simply closed on it.
    """
    message = await receive()
    if message["type"] != "http.request":
        raise DisconnectedError
    body = message.get("body", b"")
    if not message.get("more_body", False) and len(body) <= limit:
        return body  # the usual case: the whole body in one message
    chunks = [body]
    size, more = len(body), message.get("more_body", False)
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise DisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit * drain:
            break
        if size <= limit:
            chunks.append(chunk)
        more = message.get("more_body", False)
    if size > limit:
        raise RefusedError(413, f"body over {limit} bytes")
    return b"".join(chunks)
