"""The worker's settings: `WorkerSettings`, read by `ops.platform.settings.load`."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ops.platform.settings import Common, Port, Positive


class WorkerSettings(Common, frozen=True, kw_only=True):
    """The order executor."""

    paper_db: str = "var/paper.db"
    default_quantity: Positive | None = None
    retry_backoff: Annotated[tuple[Positive, ...], msgspec.Meta(min_length=1)] = (
        1.0, 2.0, 5.0, 10.0, 30.0,
    )  # fmt: skip
    fetch_timeout: Annotated[float, msgspec.Meta(gt=0, le=30)] = 2.0
    # An alert older than this at execution time is never sent to the broker (measured
    # from the earlier of the sender's `timenow` and the ingress's receipt, or from the
    # replay). 0 disables.
    max_alert_age: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # A broker call slower than this counts as a retryable timeout.
    broker_timeout: Positive = 10.0
    shutdown_grace: Positive = 10.0
    # Seconds between checks, while consuming, that ops has not provisioned more
    # partitions than this worker's count (docs/topology.md).
    partition_recheck: Positive = 30.0
    # /healthz, /readyz and /metrics (0: off).
    health_host: str = "127.0.0.1"
    health_port: Port = 8081
