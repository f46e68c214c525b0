"""The notifier's settings: `NotifierSettings`, read by `ops.platform.settings.load`.

Where notifications go, and how they are folded, is in the accounts file (`[notify]`,
ops.platform.notify_settings); these are the process's own.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from ops.platform.settings import Common, Port, Positive


class NotifierSettings(Common, frozen=True, kw_only=True):
    """The notifier."""

    # The notifier's own state (what it took in, what it still owes each target).
    notifier_db: str = "var/notifier.db"
    fetch_timeout: Annotated[float, msgspec.Meta(gt=0, le=30)] = 2.0
    # How often the DLQ's depth is read.
    dlq_poll_interval: Positive = 5.0
    # /healthz, /readyz and /metrics (0: none).
    health_port: Port = 0
    health_host: str = "127.0.0.1"
    # A target that has taken no message for this long since a send to it failed (and
    # still is owed some) makes /readyz answer 503, naming its variable.
    target_down_after: Positive = 120.0
