"""`python -m notifier`: tell people what needs them, until SIGTERM/SIGINT.

Needs the `notifier` NATS role (deploy/nats-server.conf) and its durable consumer on
EVENTS, created by provisioning (`alertbridge provision`). Where messages go is the
accounts file's `[notify]` table and each account's `notify_urls_env`. /healthz,
/readyz and /metrics on ALERTBRIDGE_HEALTH_PORT when set (notifier.health).
"""

from __future__ import annotations

import logging
import os
import sys

from notifier.run import serve
from notifier.settings import NotifierSettings
from ops.platform import logs
from ops.platform.lifecycle import run_role
from ops.platform.notify_settings import read_notify
from ops.platform.settings import SettingsError, load

log = logging.getLogger("notifier")


def main() -> int:
    """Run the notifier; exit 2 on a bad setting."""
    logs.setup("alertbridge-notifier")
    try:
        settings = load(NotifierSettings, os.environ)
        targets = read_notify(os.environ)
    except SettingsError as exc:
        print(f"notifier: {exc}", file=sys.stderr)
        return 2
    if not targets.all():
        log.warning(
            "no notification targets: set [notify] urls_env in the accounts file; "
            "events are read and folded, and nothing is sent"
        )
    return run_role("notifier", lambda _: serve(settings, targets))  # /metrics: notifier.health


if __name__ == "__main__":
    sys.exit(main())
