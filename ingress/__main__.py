"""`python -m ingress`: serve the webhook with the settings from the environment."""

from __future__ import annotations

import logging
import os
import sys

from ingress import serve
from ingress.app import create_app
from ops import heap, logs, telemetry
from ops.accounts import Accounts, load_accounts
from ops.settings import (
    PREFIX,
    RECOMMENDED_SECRET_LENGTH,
    IngressSettings,
    SettingsError,
    load,
)

log = logging.getLogger("ingress")


def main() -> int:
    """Run until SIGINT/SIGTERM; exit 2 on a bad setting, 3 when the server cannot start."""
    logs.setup("alertbridge-ingress")
    try:
        settings = load(IngressSettings, os.environ)
        accounts = load_accounts(os.environ)
        _check(settings, accounts)
    except SettingsError as exc:
        print(f"ingress: {exc}", file=sys.stderr)
        return 2
    _warn_short_secrets(settings, accounts)
    providers = telemetry.setup("alertbridge-ingress")
    try:
        app = create_app(settings, accounts, spans=providers.records_spans)
        server = serve.server(app, settings)
        try:
            sock = serve.listening_socket(settings)
        except OSError as exc:
            print(f"ingress: cannot listen on {settings.http_port}: {exc}", file=sys.stderr)
            return 3
        heap.freeze_startup_objects()  # the app is built: keep it out of full GC passes
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        providers.shutdown()
    return 0 if server.started else 3


def _check(settings: IngressSettings, accounts: Accounts) -> None:
    """What needs the settings and the accounts file together."""
    if (
        not settings.secrets
        and not any(accounts.secrets.values())
        and not (settings.hmac_secrets or any(accounts.hmac_secrets.values()))
    ):
        raise SettingsError("no webhook secret: set ALERTBRIDGE_SECRETS or accounts' own")
    for name, account in accounts.accounts.items():
        required = settings.hmac_required or account.hmac_required
        if required and not (settings.hmac_secrets or accounts.hmac_secrets.get(name)):
            raise SettingsError(
                f"account {name!r} requires signatures but has no HMAC key: set "
                f"{PREFIX}HMAC_SECRETS or the account's hmac_secrets_env"
            )
    if any(accounts.hmac_secrets.values()) and settings.hmac_window > settings.duplicate_window:
        raise SettingsError(
            f"{PREFIX}HMAC_WINDOW must not exceed {PREFIX}DUPLICATE_WINDOW: a replay inside "
            "the window must still be recognised as a duplicate"
        )


def _warn_short_secrets(settings: IngressSettings, accounts: Accounts) -> None:
    """Short secrets still start (TradingView users have them), with a nudge."""
    every = settings.secrets + tuple(s for own in accounts.secrets.values() for s in own)
    short = sum(len(secret.reveal()) < RECOMMENDED_SECRET_LENGTH for secret in every)
    if short:
        log.warning(
            "%d webhook secret(s) shorter than %d characters: consider a longer one, "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'",
            short,
            RECOMMENDED_SECRET_LENGTH,
        )


if __name__ == "__main__":
    sys.exit(main())
