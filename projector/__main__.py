"""`python -m projector`: keep the read models up to date, until SIGTERM/SIGINT.

Needs the `projector` NATS role (deploy/nats-server.conf) and its durable consumers on
EVENTS and DLQ, created by provisioning (`alertbridge provision`); ALERTS it reads by
sequence (projector.follow). The views are
in `ALERTBRIDGE_PROJECTIONS_DB` (ops.platform.projections; docs/projections.md).
"""

from __future__ import annotations

import asyncio
import os
import sys

from ops.platform import logs, telemetry
from ops.platform.settings import SettingsError, load
from projector.run import serve
from projector.settings import ProjectorSettings


def main() -> int:
    """Run the projector; exit 2 on a bad setting."""
    logs.setup("alertbridge-projector")
    try:
        settings = load(ProjectorSettings, os.environ)
    except SettingsError as exc:
        print(f"projector: {exc}", file=sys.stderr)
        return 2
    providers = telemetry.setup("alertbridge-projector")
    try:
        asyncio.run(serve(settings))
    except SettingsError as exc:  # e.g. NATS refused the credentials
        print(f"projector: {exc}", file=sys.stderr)
        return 2
    finally:
        providers.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
