"""`python -m ingress`: serve the webhook with the settings from the environment."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from ingress.app import create_app
from ops.settings import IngressSettings, SettingsError, load


def main() -> int:
    """Run until SIGINT/SIGTERM; exit 2 on a bad setting."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load(IngressSettings, os.environ)
    except SettingsError as exc:
        print(f"ingress: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
