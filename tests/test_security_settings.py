"""The sender-verification settings: off by default, errors that name the variable, the
subject and network parsers, and where the limits live."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.routes import ASGIRoute

from ingress.__main__ import _warn_short_secrets
from ingress.access import format_subject, parse_networks, parse_subject, subject_matches
from ingress.app import create_app
from ingress.guard import Policy
from ingress.serve import IngressProtocol, uvicorn_options
from ingress.settings import IngressSettings, check_ingress, load_ingress
from ops.platform.accounts import ingress_accounts
from ops.platform.settings import SettingsError, load

BASE = {"ALERTBRIDGE_SECRETS": "a-long-enough-secret", "ALERTBRIDGE_NATS_URL": "nats://x:4222"}


def _load(**extra: str) -> IngressSettings:
    return load(
        IngressSettings, {**BASE, **{f"ALERTBRIDGE_{k.upper()}": v for k, v in extra.items()}}
    )


def _error(**extra: str) -> str:
    with pytest.raises(SettingsError) as caught:
        _load(**extra)
    return str(caught.value)


def test_every_sender_check_is_off_by_default() -> None:
    config = _load()
    assert config.allow_ips == () and config.trusted_proxies == ()
    assert config.require_client_cert is False and config.tls_cert is None
    assert config.hmac_secrets == () and config.hmac_required is False
    assert config.rate_limit is None and config.account_rate_limit is None
    assert config.rate_limit_exempt == ("tradingview",)
    assert (config.body_timeout, config.max_header_bytes) == (10.0, 8192)
    policy = Policy.from_settings(config)
    assert not policy.needs_source  # no address parsing, no limiter, no certificate check
    assert policy.body_timeout == 10.0


def test_the_protocol_carries_the_head_cap_and_the_body_deadline() -> None:
    options = uvicorn_options(_load())
    assert options["proxy_headers"] is False  # uvicorn must not rewrite the client address
    protocol = options["http"]
    assert issubclass(protocol, IngressProtocol)
    assert (protocol.max_head, protocol.body_timeout) == (8192, 10.0)
    off = uvicorn_options(_load(body_timeout="0", max_header_bytes="0"))["http"]
    assert (off.max_head, off.body_timeout) == (0, 0.0)


def test_the_webhook_is_one_asgi_route() -> None:
    app = create_app(_load())
    webhook = [r for r in app.routes if "webhook" in r.path]
    assert [r.path for r in webhook] == ["/webhook"]  # mounted: /webhook/{secret} too
    assert isinstance(webhook[0], ASGIRoute)


def test_tls_options(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    config = _load(
        tls_cert=str(tmp_path / "cert.pem"),
        tls_key=str(tmp_path / "key.pem"),
        tls_client_ca=str(tmp_path / "ca.pem"),
        require_client_cert="true",
    )
    options = uvicorn_options(config)
    assert options["ssl_certfile"] == str(tmp_path / "cert.pem")
    assert options["ssl_ca_certs"] == str(tmp_path / "ca.pem")
    assert options["ssl_cert_reqs"] == 2  # ssl.CERT_REQUIRED
    assert issubclass(options["http"], IngressProtocol)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"allow_ips": "10.0.0.1/8"}, "ALERTBRIDGE_ALLOW_IPS='10.0.0.1/8' is invalid"),
        ({"allow_ips": "tradingview,bogus"}, "'bogus' is not an IP address or CIDR"),
        ({"trusted_proxies": "300.1.1.1"}, "ALERTBRIDGE_TRUSTED_PROXIES"),
        ({"rate_limit_exempt": "x"}, "ALERTBRIDGE_RATE_LIMIT_EXEMPT"),
        ({"rate_limit": "60 per fortnight"}, "ALERTBRIDGE_RATE_LIMIT='60 per fortnight'"),
        ({"account_rate_limit": "0/minute"}, "ALERTBRIDGE_ACCOUNT_RATE_LIMIT"),
        ({"proxy_header": "X-Real-IP"}, "ALERTBRIDGE_PROXY_HEADER='X-Real-IP' is invalid"),
        ({"client_cert_subject": "CN=TradingView Webhooks,O=TradingView, Inc."},
         "ALERTBRIDGE_CLIENT_CERT_SUBJECT"),
        ({"tls_key": "/k.pem"}, "ALERTBRIDGE_TLS_KEY needs ALERTBRIDGE_TLS_CERT"),
        ({"tls_cert": "/nonexistent.pem"}, "ALERTBRIDGE_TLS_CERT='/nonexistent.pem' is not"),
        ({"require_client_cert": "true"}, "ALERTBRIDGE_REQUIRE_CLIENT_CERT needs"),
        ({"require_client_cert": "maybe"}, "ALERTBRIDGE_REQUIRE_CLIENT_CERT='maybe'"),
        ({"client_cert_header": "X-SSL-Client-S-DN", "require_client_cert": "true"},
         "ALERTBRIDGE_CLIENT_CERT_HEADER needs ALERTBRIDGE_TRUSTED_PROXIES"),
        ({"client_cert_header": "X-SSL-Client-S-DN", "trusted_proxies": "10.0.0.0/8"},
         "ALERTBRIDGE_CLIENT_CERT_HEADER needs ALERTBRIDGE_REQUIRE_CLIENT_CERT=true"),
        ({"body_timeout": "-1"}, "ALERTBRIDGE_BODY_TIMEOUT"),
        ({"max_header_bytes": "99999999"}, "ALERTBRIDGE_MAX_HEADER_BYTES"),
    ],
)  # fmt: skip
def test_a_bad_security_setting_names_the_variable(extra: dict[str, str], needle: str) -> None:
    assert needle in _error(**extra)


def test_rates_in_the_limits_notation() -> None:
    for rate in ("60/minute", "10 per second", "1000/hour", "5/10 seconds", "2 per day"):
        assert _load(rate_limit=rate).rate_limit == rate


def test_a_required_signature_needs_a_key(tmp_path: Path) -> None:
    path = tmp_path / "alertbridge.toml"
    path.write_text('[accounts.default]\nbroker = "paper"\nhmac_required = true\n')
    accounts = ingress_accounts({"ALERTBRIDGE_CONFIG": str(path)})
    with pytest.raises(SettingsError, match="account 'default' requires signatures"):
        check_ingress(_load(), accounts)
    check_ingress(_load(hmac_secrets="h" * 32), accounts)


def test_signing_senders_need_no_webhook_secret() -> None:
    config = load(IngressSettings, {"ALERTBRIDGE_HMAC_SECRETS": "h" * 32})
    assert config.secrets == () and len(config.hmac_secrets) == 1
    check_ingress(config, ingress_accounts({}))
    with pytest.raises(SettingsError, match="no default secret"):
        load_ingress({})


def test_short_secrets_start_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    _warn_short_secrets(_load(secrets="eight888"), ingress_accounts({}))
    assert "1 webhook secret(s) shorter than 16 characters" in caplog.text
    assert "eight888" not in caplog.text
    caplog.clear()
    _warn_short_secrets(_load(), ingress_accounts({}))
    assert caplog.text == ""


# --- subjects and networks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        ("CN=TradingView Webhooks,O=TradingView\\, Inc.",
         {("CN", "TradingView Webhooks"), ("O", "TradingView, Inc.")}),
        ("/C=US/O=TradingView, Inc./CN=TradingView Webhooks",
         {("C", "US"), ("O", "TradingView, Inc."), ("CN", "TradingView Webhooks")}),
        ("cn = a\\2Cb + o=x", {("CN", "a,b"), ("O", "x")}),
        ("CN=\\C3\\A9t\\C3\\A9", {("CN", "été")}),
        ("commonName=x,organizationName=y", {("CN", "x"), ("O", "y")}),
    ],
)  # fmt: skip
def test_subjects_parse(text: str, pairs: set[tuple[str, str]]) -> None:
    assert parse_subject(text) == pairs


@pytest.mark.parametrize("text", ["", "CN", "CN=x,\\", "no equals sign", "CN=\\ff"])
def test_bad_subjects_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        parse_subject(text)


def test_subject_matching() -> None:
    required = parse_subject("CN=TradingView Webhooks,O=TradingView\\, Inc.")
    assert subject_matches(
        required, parse_subject("C=US,O=TradingView\\, Inc.,CN=TradingView Webhooks")
    )
    assert not subject_matches(required, parse_subject("CN=TradingView Webhooks"))
    assert not subject_matches(
        required, parse_subject("CN=TradingView Webhooks 2,O=TradingView\\, Inc.")
    )
    assert not subject_matches(required, frozenset())


values = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20)
SHORT = {"commonName": "CN", "organizationName": "O", "countryName": "C"}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(SHORT)), values), min_size=1, max_size=4))
def test_format_then_parse_is_the_identity(attributes: list[tuple[str, str]]) -> None:
    """What the TLS protocol writes (format_subject) the guard reads back (parse_subject)."""
    rdns = [((kind, value),) for kind, value in attributes]
    assert parse_subject(format_subject(rdns)) == {(SHORT[k], v) for k, v in attributes}


def test_networks() -> None:
    assert len(parse_networks(["tradingview", "none", "10.0.0.0/8", "2001:db8::/32"])) == 6
    assert parse_networks(["none"]) == ()
