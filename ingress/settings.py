"""The ingress's settings: `IngressSettings` (read by `ops.platform.settings.load`), the
rules between its fields, and `load_ingress`, the one place for the rules that need the
settings and the accounts file together.

The sender checks' values (networks, certificate subject) are parsed here, by the
same functions `check` validates them with, so the ingress never parses them again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec

from ingress.access import (
    PROXY_HEADERS,
    RATE_PATTERN,
    TRADINGVIEW,
    TRADINGVIEW_SUBJECT,
    Network,
    Subject,
    parse_networks,
    parse_subject,
)
from ops.platform.accounts import IngressAccounts, ingress_accounts
from ops.platform.settings import PREFIX, Common, Port, Secret, SettingsError, load

if TYPE_CHECKING:
    from collections.abc import Mapping


class IngressSettings(Common, frozen=True, kw_only=True):
    """The webhook receiver."""

    http_host: str = "127.0.0.1"
    http_port: Port = 8080
    # SO_REUSEPORT: several ingress processes listen on one port, the kernel spreads
    # the connections (`alertbridge up --ingress N`).
    http_reuse_port: bool = False
    # `python -m ingress` runs this many copies of itself on the port (ingress.pool);
    # 0: one per core the container may use. Compose sets it: a replicas line cannot
    # share the published port.
    ingress_processes: Annotated[int, msgspec.Meta(ge=0, le=64)] = 1
    secrets: tuple[Secret, ...] = ()
    max_body_bytes: Annotated[int, msgspec.Meta(ge=256)] = 64 * 1024
    # TradingView cancels at 3 s and does not resend timeouts: answer 503 well before.
    publish_timeout: Annotated[float, msgspec.Meta(gt=0, le=2.5)] = 1.0
    # Sender verification (docs/security.md); each is off until configured.
    # Source addresses: IPs/CIDRs or `tradingview`; forwarding headers only from these proxies.
    allow_ips: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    proxy_header: str = "X-Forwarded-For"  # or `Forwarded` (RFC 7239); the other is ignored
    # HTTPS served by the ingress itself, and TradingView's client certificate.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    require_client_cert: bool = False
    client_cert_subject: str = TRADINGVIEW_SUBJECT
    client_cert_header: str | None = None  # behind a trusted proxy that verified the cert
    # HMAC-signed requests (X-Signature, X-Timestamp) for senders that can sign.
    hmac_secrets: tuple[Secret, ...] = ()
    hmac_required: bool = False
    hmac_window: Annotated[float, msgspec.Meta(gt=0, le=3_600)] = 300.0
    # Rate limits (`60/minute`): per source address before the body is read, per account
    # once the sender is authenticated. TradingView's addresses are exempt by default.
    rate_limit: Annotated[str, msgspec.Meta(pattern=RATE_PATTERN)] | None = None
    account_rate_limit: Annotated[str, msgspec.Meta(pattern=RATE_PATTERN)] | None = None
    rate_limit_exempt: tuple[str, ...] = (TRADINGVIEW,)
    # Hostile input: a body must arrive within this many seconds, and the request line
    # plus headers must fit in this many bytes (0: no deadline; h11's own 16 KiB cap).
    body_timeout: Annotated[float, msgspec.Meta(ge=0, le=300)] = 10.0
    max_header_bytes: Annotated[int, msgspec.Meta(ge=0, le=1_048_576)] = 8_192

    @property
    def allowed(self) -> tuple[Network, ...] | None:
        """ALERTBRIDGE_ALLOW_IPS, parsed (None: every source may send)."""
        return parse_networks(self.allow_ips) if self.allow_ips else None

    @property
    def proxies(self) -> tuple[Network, ...]:
        """ALERTBRIDGE_TRUSTED_PROXIES, parsed."""
        return parse_networks(self.trusted_proxies)

    @property
    def exempt(self) -> tuple[Network, ...]:
        """ALERTBRIDGE_RATE_LIMIT_EXEMPT, parsed."""
        return parse_networks(self.rate_limit_exempt)

    @property
    def certificate_subject(self) -> Subject:
        """ALERTBRIDGE_CLIENT_CERT_SUBJECT, parsed."""
        return parse_subject(self.client_cert_subject)

    def check(self) -> None:
        """The sender-verification settings parse, fit together and name files that exist."""
        for name in ("allow_ips", "trusted_proxies", "rate_limit_exempt"):
            _networks(name, getattr(self, name))  # the same parse as `allowed` etc.
        try:
            parse_subject(self.client_cert_subject)
        except ValueError as exc:
            raise SettingsError(
                f"{PREFIX}CLIENT_CERT_SUBJECT={self.client_cert_subject!r} is invalid: {exc} "
                "(escape a comma inside a value as \\,)"
            ) from None
        p = PREFIX
        wrong = [
            (self.proxy_header.lower() not in PROXY_HEADERS,
             f"{p}PROXY_HEADER={self.proxy_header!r} is invalid: "
             "give X-Forwarded-For or Forwarded"),
            (self.tls_key is not None and self.tls_cert is None,
             f"{p}TLS_KEY needs {p}TLS_CERT"),
            (self.tls_client_ca is not None and self.tls_cert is None,
             f"{p}TLS_CLIENT_CA needs {p}TLS_CERT"),
            (self.require_client_cert and self.client_cert_header is None
             and self.tls_client_ca is None,
             f"{p}REQUIRE_CLIENT_CERT needs {p}TLS_CLIENT_CA (TLS served here) or "
             f"{p}CLIENT_CERT_HEADER (TLS ended by a proxy)"),
            (self.client_cert_header is not None and not self.trusted_proxies,
             f"{p}CLIENT_CERT_HEADER needs {p}TRUSTED_PROXIES: only they may set it"),
            (self.client_cert_header is not None and not self.require_client_cert,
             f"{p}CLIENT_CERT_HEADER needs {p}REQUIRE_CLIENT_CERT=true, else nothing checks it"),
        ]  # fmt: skip
        for condition, message in wrong:
            if condition:
                raise SettingsError(message)
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise SettingsError(f"{PREFIX}{name.upper()}={path!r} is not a readable file")


def _networks(name: str, values: tuple[str, ...]) -> tuple[Network, ...]:
    try:
        return parse_networks(values)
    except ValueError as exc:
        raise SettingsError(
            f"{PREFIX}{name.upper()}={','.join(values)!r} is invalid: {exc}"
        ) from None


def load_ingress(env: Mapping[str, str] = os.environ) -> tuple[IngressSettings, IngressAccounts]:
    """The ingress's settings and accounts, with every check that needs both."""
    settings = load(IngressSettings, env)
    accounts = ingress_accounts(env)
    check_ingress(settings, accounts)
    return settings, accounts


def check_ingress(settings: IngressSettings, accounts: IngressAccounts) -> None:
    """The rules that need the settings and the accounts file together (the one place)."""
    p = PREFIX
    own_keys = any(accounts.hmac_secrets.values())
    if not (settings.secrets or any(accounts.secrets.values()) or settings.hmac_secrets
            or own_keys):  # fmt: skip
        raise SettingsError(
            f"{p}SECRETS (comma-separated) or {p}SECRETS_FILE must give at least one webhook "
            f"secret (or {p}CONFIG accounts their own, or {p}HMAC_SECRETS keys); there is no "
            "default secret"
        )
    for name in sorted(accounts.names):
        required = settings.hmac_required or name in accounts.hmac_required
        if required and not (settings.hmac_secrets or accounts.hmac_secrets.get(name)):
            raise SettingsError(
                f"account {name!r} requires signatures but has no HMAC key: set "
                f"{p}HMAC_SECRETS or the account's hmac_secrets_env"
            )
    signs = settings.hmac_required or bool(settings.hmac_secrets) or own_keys
    if signs and settings.hmac_window > settings.duplicate_window:
        raise SettingsError(
            f"{p}HMAC_WINDOW must not exceed {p}DUPLICATE_WINDOW: a replay inside the window "
            "must still be recognised as a duplicate"
        )
