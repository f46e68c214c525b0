"""`python -m console`: the web console and its API, until SIGTERM/SIGINT.

Needs the `console` NATS role (deploy/nats-server.conf), its token file
(`ALERTBRIDGE_CONSOLE_TOKEN_FILE`, written by `alertbridge up`) and the projector's file
(`ALERTBRIDGE_PROJECTIONS_DB`). Exit 2 on a bad setting.
"""

from __future__ import annotations

import os
import sys

import uvicorn

from console.app import create_app
from console.settings import ConsoleSettings, read_token
from ops.platform import logs
from ops.platform.settings import SettingsError, load


def main() -> int:
    """Serve the console; exit 2 on a bad setting or refused NATS credentials."""
    logs.setup("alertbridge-console")
    try:
        settings = load(ConsoleSettings, os.environ)
        token = read_token(settings)
    except SettingsError as exc:
        print(f"console: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        create_app(settings, token),
        host=settings.console_host,
        port=settings.console_port,
        log_config=None,  # ours (ops.platform.logs)
        access_log=False,
        timeout_graceful_shutdown=3,  # live feeds never end by themselves
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 2


if __name__ == "__main__":
    sys.exit(main())
