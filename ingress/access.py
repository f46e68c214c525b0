"""Who may reach the ingress, as configured: networks, certificate subjects, rates.

Parsed here, in `ops`, so that `ops.platform.settings.load` refuses a bad value at start
with the variable's name; the ingress uses the same functions at run time.

Subjects are read in the RFC 4514 form (`CN=TradingView Webhooks,O=TradingView\\, Inc.`,
what nginx's `$ssl_client_s_dn` and Apache's `SSL_CLIENT_S_DN` give) and in
OpenSSL's legacy one-line form (`/O=TradingView, Inc./CN=TradingView Webhooks`,
HAProxy's default `ssl_c_s_dn`).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address
# (attribute type in upper-case short form, value) pairs; a subject is a set of them.
Subject = frozenset[tuple[str, str]]

TRADINGVIEW: Final = "tradingview"
# TradingView's webhook senders (its support pages): IPv4 only, ports 80 and 443.
TRADINGVIEW_IPS: Final = ("52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7")
# The client certificate TradingView presents over HTTPS.
TRADINGVIEW_SUBJECT: Final = "CN=TradingView Webhooks,O=TradingView\\, Inc."
NONE: Final = "none"
# The forwarding headers a trusted proxy may write (one is honoured, the other ignored).
PROXY_HEADERS: Final = ("x-forwarded-for", "forwarded")

# `60/minute`, `10 per second`, `1000/hour`, `5/10 seconds` (the `limits` package's notation).
RATE_PATTERN: Final = r"^\s*[1-9][0-9]*\s*(/|per)\s*([1-9][0-9]*\s*)?(second|minute|hour|day)s?\s*$"

# OpenSSL's long names (what `ssl.SSLSocket.getpeercert()` gives) -> RFC 4514 short names.
_SHORT: Final = {
    "commonname": "CN",
    "organizationname": "O",
    "organizationalunitname": "OU",
    "countryname": "C",
    "localityname": "L",
    "stateorprovincename": "ST",
    "streetaddress": "STREET",
    "domaincomponent": "DC",
    "userid": "UID",
}
_SPECIAL: Final = frozenset(',+"\\<>;=')


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """IPs and CIDRs; `tradingview` means TradingView's four addresses, `none` nothing.

    A CIDR with host bits set (`10.0.0.1/8`) is refused rather than guessed at.
    """
    found: list[Network] = []
    for value in values:
        word = value.strip().lower()
        if word == TRADINGVIEW:
            found += [ip_network(ip) for ip in TRADINGVIEW_IPS]
        elif word != NONE:
            try:
                found.append(ip_network(value.strip()))
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IP address or CIDR ({exc})") from None
    return tuple(found)


def contains(networks: tuple[Network, ...], address: Address) -> bool:
    """Whether `address` lies in one of `networks` (an IPv4 address is in no IPv6 network)."""
    return any(address in network for network in networks)


def parse_subject(text: str) -> Subject:
    """A distinguished name as a set of (type, value); ValueError when it is not one."""
    text = text.lstrip()  # a trailing space may be escaped (`\\ `): _strip knows
    pairs = _legacy_pairs(text.rstrip()) if text.startswith("/") else _rfc4514_pairs(text)
    if not pairs:
        raise ValueError("a subject such as 'CN=TradingView Webhooks,O=TradingView\\, Inc.'")
    return frozenset(pairs)


def subject_matches(required: Subject, presented: Subject) -> bool:
    """Each attribute type named in `required` has exactly the required values in `presented`.

    Other attributes of the presented subject (C, ST, ...) are not looked at; a second
    CN beside the required one is a mismatch, not a match.
    """
    for kind in {kind for kind, _ in required}:
        wanted = {value for k, value in required if k == kind}
        if {value for k, value in presented if k == kind} != wanted:
            return False
    return True


def format_subject(rdns: Iterable[Iterable[tuple[str, str]]]) -> str:
    """RFC 4514 text for a subject as `ssl` gives it (outermost RDN first)."""
    parts = ["+".join(f"{_short(kind)}={_escape(value)}" for kind, value in rdn) for rdn in rdns]
    return ",".join(reversed(parts))


def _short(kind: str) -> str:
    return _SHORT.get(kind.strip().lower(), kind.strip().upper())


def _escape(value: str) -> str:
    escaped = "".join(f"\\{c}" if c in _SPECIAL else c for c in value)
    escaped = escaped.replace("\x00", "\\00")
    if escaped.startswith((" ", "#")):
        escaped = "\\" + escaped
    if value.endswith(" ") and len(value) > 1:
        escaped = escaped[:-1] + "\\ "
    return escaped


def _legacy_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in re.split(r"/(?=[A-Za-z][A-Za-z0-9.-]*=)", text[1:]):
        kind, sep, value = part.partition("=")
        if not sep or not kind.strip():
            raise ValueError(f"{part!r} is not TYPE=value")
        pairs.append((_short(kind), value))
    return pairs


def _rfc4514_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in _split_unescaped(text):
        kind, sep, value = part.partition("=")
        if not sep or not kind.strip():
            raise ValueError(f"{part!r} is not TYPE=value")
        pairs.append((_short(kind), _unescape(_strip(value))))
    return pairs


def _split_unescaped(text: str) -> list[str]:
    """Split at the `,` and `+` that are not escaped (multi-valued RDNs become pairs too)."""
    parts, current, i = [], [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if char in ",+":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def _strip(value: str) -> str:
    """Drop the spaces around a value, but not an escaped trailing one (`\\ `)."""
    value = value.lstrip(" ")
    while value.endswith(" "):
        backslashes = len(value[:-1]) - len(value[:-1].rstrip("\\"))
        if backslashes % 2:
            break
        value = value[:-1]
    return value


def _unescape(value: str) -> str:
    """Undo RFC 4514 escapes: `\\,` and friends, and `\\XX` hex pairs (UTF-8 bytes)."""
    out, i = bytearray(), 0
    while i < len(value):
        char = value[i]
        if char != "\\":
            out += char.encode()
            i += 1
            continue
        pair = value[i + 1 : i + 3]
        if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
            out.append(int(pair, 16))
            i += 3
        elif i + 1 < len(value):
            out += value[i + 1].encode()
            i += 2
        else:
            raise ValueError(f"{value!r} ends with a lone backslash")
    try:
        return out.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{value!r} escapes bytes that are not UTF-8") from None
