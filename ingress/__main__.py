"""`python -m ingress`: serve the webhook with the settings from the environment (with
`ALERTBRIDGE_INGRESS_PROCESSES` other than 1, supervise that many that do: ingress.pool)."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from ingress import pool, serve
from ingress.app import create_app
from ingress.settings import IngressSettings, load_ingress
from ops.platform import heap, logs, telemetry
from ops.platform.settings import RECOMMENDED_SECRET_LENGTH, SettingsError

if TYPE_CHECKING:
    from ops.platform.accounts import IngressAccounts

log = logging.getLogger("ingress")


def main() -> int:
    """Run until SIGINT/SIGTERM; exit 2 on a bad setting, 3 when the server cannot start."""
    logs.setup("alertbridge-ingress")
    try:
        settings, accounts = load_ingress(os.environ)
    except SettingsError as exc:
        print(f"ingress: {exc}", file=sys.stderr)
        return 2
    processes = pool.count(settings.ingress_processes)
    if processes > 1:
        return pool.run(processes)  # each child serves as below
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


def _warn_short_secrets(settings: IngressSettings, accounts: IngressAccounts) -> None:
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
