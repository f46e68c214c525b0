"""Connecting to NATS the way a process that must run unattended needs to."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import nats

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger(__name__)


async def connect(servers: tuple[str, ...], *, name: str) -> Client:
    """Connect, and keep reconnecting forever (the default gives up after two minutes)."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnected() -> None:
        log.info("nats disconnected (reconnecting unless closing)")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=list(servers),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1.0,
        connect_timeout=2,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
