"""`python -m projector`: keep the read models up to date, until SIGTERM/SIGINT.

Needs the `projector` NATS role (deploy/nats-server.conf) and its durable consumers on
EVENTS and DLQ, created by provisioning (`alertbridge provision`); ALERTS it reads by
sequence (projector.follow). The views are
in `ALERTBRIDGE_PROJECTIONS_DB` (ops.platform.projections; docs/projections.md).
"""

from __future__ import annotations

import os
import sys

from ops.platform import logs
from ops.platform.lifecycle import run_role
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
    return run_role("projector", lambda _: serve(settings))


if __name__ == "__main__":
    sys.exit(main())
