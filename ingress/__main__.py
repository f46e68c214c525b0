"""`python -m ingress`: serve the webhook with the settings from the environment."""

from __future__ import annotations

import os
import sys

import uvicorn

from ingress.app import create_app
from ops import logs, telemetry
from ops.accounts import load_accounts
from ops.settings import IngressSettings, SettingsError, load


def main() -> int:
    """Run until SIGINT/SIGTERM; exit 2 on a bad setting."""
    logs.setup("alertbridge-ingress")
    try:
        settings = load(IngressSettings, os.environ)
        accounts = load_accounts(os.environ)
        if not settings.secrets and not any(accounts.secrets.values()):
            raise SettingsError("no webhook secret: set ALERTBRIDGE_SECRETS or accounts' own")
    except SettingsError as exc:
        print(f"ingress: {exc}", file=sys.stderr)
        return 2
    providers = telemetry.setup("alertbridge-ingress")
    try:
        uvicorn.run(
            create_app(settings, accounts),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,  # keep ops.logs' handler
            log_level="warning",
            access_log=False,  # an access log would print a secret carried in the URL path
            timeout_graceful_shutdown=5,
        )
    finally:
        providers.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
