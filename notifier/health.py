"""The notifier's `/healthz`, `/readyz` and `/metrics` (ops.platform.healthserver), on
ALERTBRIDGE_HEALTH_PORT (0, the default: none).

/readyz answers 503 with what is wrong:
- `nats: not connected`;
- its consumer (EVENTS/notifier) cannot be pulled from: missing, or its stream is
  (`alertbridge provision` makes them), or another error of the last pull;
- the DLQ stream is missing while its depth is watched (`dlq_depth_threshold` > 0);
- a target has taken no message for ALERTBRIDGE_TARGET_DOWN_AFTER seconds since a send
  to it failed, and is still owed some. A target is named by the variable that holds its
  URL, never by the URL: that holds a token.

/metrics has `alertbridge_notifier_owed{target="<variable>"}`: the messages each target
is still owed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError, ServiceUnavailableError
from opentelemetry.metrics import Observation

from contracts.subjects import DLQ_STREAM, EVENTS_STREAM
from contracts.topology import NOTIFIER

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nats.aio.client import Client
    from nats.js.client import JetStreamContext
    from opentelemetry.metrics import CallbackOptions

    from notifier.run import Loops
    from notifier.store import Store
    from ops.platform.notify_settings import NotifyTargets

log = logging.getLogger("notifier")


@dataclass(frozen=True)
class Health:
    """What /readyz and /metrics say about one notifier process."""

    nc: Client
    js: JetStreamContext
    loops: Loops
    store: Store
    targets: NotifyTargets
    down_after: float

    async def problems(self) -> list[str]:
        """What keeps the notifier from doing its job (empty: ready)."""
        found = await self._nats() if self.nc.is_connected else ["nats: not connected"]
        return found + self._targets_down(time.time())

    async def _nats(self) -> list[str]:
        found = []
        match self.loops.pull_error:
            case None:
                pass
            case ServiceUnavailableError():  # nothing answers a pull there
                found.append(
                    f"consumer {EVENTS_STREAM}/{NOTIFIER}: missing (or its stream): "
                    "run `alertbridge provision`"
                )
            case error:
                found.append(f"consumer {EVENTS_STREAM}/{NOTIFIER}: {error!r}")
        if self.targets.config.dlq_depth_threshold > 0:
            try:
                await self.js.stream_info(DLQ_STREAM)
            except NotFoundError:
                found.append(f"stream {DLQ_STREAM}: missing: run `alertbridge provision`")
            except (NatsError, TimeoutError) as exc:
                found.append(f"stream {DLQ_STREAM}: {exc!r}")
        return found

    def _targets_down(self, now: float) -> list[str]:
        return [
            f"target {down.target}: has taken no message for {now - down.since:.0f}s "
            f"({down.owed} owed)"
            for down in self.store.down(now - self.down_after)
        ]

    def observe_owed(self, _: CallbackOptions) -> Iterable[Observation]:
        """The `alertbridge.notifier.owed` gauge, per target (as of the last tick: the
        store is the event loop's, and an exporter may call this from its own thread)."""
        owing = self.loops.owing
        return [Observation(owing.get(t.name, 0), {"target": t.name}) for t in self.targets.all()]
