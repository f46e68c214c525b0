"""The projector's settings: `ProjectorSettings`, read by `ops.platform.settings.load`."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ops.platform.projections import DEFAULT_DB
from ops.platform.settings import Common, Port, Positive


class ProjectorSettings(Common, frozen=True, kw_only=True):
    """The projector."""

    # The read models (a link to the current generation; projector.rebuild).
    projections_db: str = DEFAULT_DB
    fetch_timeout: Annotated[float, msgspec.Meta(gt=0, le=30)] = 2.0
    # How often the streams' last sequences are read (the lag).
    lag_interval: Positive = 2.0
    # /healthz, /readyz and /metrics (the lag as `alertbridge_projector_lag`); 0: none.
    health_port: Port = 0
    health_host: str = "127.0.0.1"
