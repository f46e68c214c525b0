"""What the console's handlers share: its settings, its token, its NATS connection, the
live feed, and the way to the read models."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

from litestar.exceptions import HTTPException, ServiceUnavailableException

from console.feed import Feed
from ops.platform.natsconn import jetstream
from ops.platform.projections import open_readonly

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterator

    from litestar.datastructures import State
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from console.auth import Access
    from console.settings import ConsoleSettings


@dataclass
class Runtime:
    """The console process's state (in the Litestar app's `state.runtime`)."""

    settings: ConsoleSettings
    access: Access
    nc: Client | None = None
    feed: Feed = field(init=False)

    def __post_init__(self) -> None:
        self.feed = Feed(self.read_models)

    @property
    def client(self) -> Client:
        """The NATS connection (the app's lifespan makes it before serving)."""
        if self.nc is None or not self.nc.is_connected:
            raise ServiceUnavailableException("NATS is not reachable right now: try again")
        return self.nc

    @property
    def js(self) -> JetStreamContext:
        """The console role's JetStream context."""
        return jetstream(self.client, self.settings)

    @contextlib.contextmanager
    def read_models(self) -> Iterator[sqlite3.Connection]:
        """The read models, read-only, opened for one use: a rebuild swaps the file, and
        a connection held open would go on reading the old one. FileNotFoundError: none."""
        db = open_readonly(self.settings.projections_db)
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def views(self) -> Iterator[sqlite3.Connection]:
        """`read_models` for a request: 503 when the projector has made none yet."""
        try:
            with self.read_models() as db:
                yield db
        except FileNotFoundError:
            raise HTTPException(
                status_code=503, detail="no projections yet: is the projector running?"
            ) from None

    def trace_url(self, trace_id: str | None) -> str | None:
        """The Jaeger UI's page of a trace, when a Jaeger URL is configured."""
        if trace_id is None or self.settings.jaeger_url is None:
            return None
        return f"{self.settings.jaeger_url.rstrip('/')}/trace/{quote(trace_id, safe='')}"


def runtime(state: State) -> Runtime:
    """The Runtime in an app's state."""
    found: Runtime = state.runtime
    return found
