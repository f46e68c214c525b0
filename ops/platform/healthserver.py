"""`/healthz`, `/readyz` and `/metrics` for a process that serves no HTTP of its own."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, get
from litestar.response import Response

from ops.platform.telemetry import PROMETHEUS_CONTENT_TYPE, metrics_text

Readiness = Callable[[], Awaitable[list[str]]]


log = logging.getLogger(__name__)


def health_app(ready: Readiness) -> Litestar:
    """The three endpoints; `ready()` returns what is wrong (empty: ready)."""

    @get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @get("/readyz")
    async def readyz() -> Response[bytes]:
        problems = await ready()
        body = msgspec.json.encode({"ok": not problems, "problems": problems})
        return Response(body, status_code=503 if problems else 200, media_type="application/json")

    @get("/metrics", media_type=PROMETHEUS_CONTENT_TYPE)
    async def prometheus() -> bytes:
        return metrics_text()

    return Litestar(
        route_handlers=[healthz, readyz, prometheus], openapi_config=None, logging_config=None
    )


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling: the hosting process owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def health_server(ready: Readiness, host: str, port: int) -> uvicorn.Server:
    """A server to run as a task in the process's own event loop (`await server.serve()`);
    set `should_exit = True` to stop it."""
    config = uvicorn.Config(
        health_app(ready), host=host, port=port, log_config=None, log_level="warning",
        access_log=False, lifespan="off",
    )  # fmt: skip
    return _Server(config)


async def serve_probes(server: uvicorn.Server, port: int, role: str) -> None:
    """Run `server` until its `should_exit`. uvicorn exits the process when it cannot
    bind: here that is logged and the process goes on without its probes (its work
    matters more than them, and a supervisor must not restart it in a loop for a port)."""
    try:
        await server.serve()
    except SystemExit:
        log.error("health/metrics port %d unavailable; the %s goes on without it", port, role)
