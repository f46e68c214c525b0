"""The ingress's side of NATS: one connection, publish with dedup, bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from nats.errors import ConnectionClosedError, OutboundBufferLimitError
from nats.js.errors import APIError, NoStreamResponseError

from contracts import tracing
from contracts.headers import MSG_ID
from contracts.messages import Alert, alert_encoder
from contracts.subjects import ALERTS_STREAM, alert_subject
from ops import provision
from ops.natsconn import NatsAuthError, connect

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from ingress.telemetry import IngressMetrics
    from ops.settings import IngressSettings

log = logging.getLogger(__name__)


class UnavailableError(Exception):
    """The alert could not be stored in time; the sender should retry (503)."""


class Publisher:
    """Publishes alerts to `ALERTS` and reports whether the server already had them."""

    def __init__(self, settings: IngressSettings, instruments: IngressMetrics) -> None:
        self._settings = settings
        self._metrics = instruments
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._refused: str | None = None

    async def start(self) -> None:
        """Connect in the background: the ingress answers (503) even while NATS is down."""
        self._connecting = asyncio.create_task(self._connect_until_up())

    async def _connect_until_up(self) -> None:
        # connect() retries forever (max_reconnect_attempts=-1), first connect included,
        # unless the server refuses our credentials: then say so and stay unready (503).
        try:
            self._nc = await connect(self._settings, name="alertbridge-ingress")
        except NatsAuthError as exc:
            self._refused = str(exc)
            log.error("%s", exc)
            return
        self._js = self._nc.jetstream()

    async def stop(self) -> None:
        """Flush what is in flight and close."""
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()

    async def publish(self, alert: Alert) -> bool:
        """Store the alert with the current trace context; return True when it was a
        duplicate. Raise UnavailableError."""
        subject = alert_subject(alert.account, alert.symbol)
        headers = tracing.inject({MSG_ID: alert.id})
        started = time.perf_counter()
        try:
            duplicate = await self._publish(subject, alert, headers)
        except UnavailableError:
            self._metrics.unavailable += 1
            raise
        self._metrics.publish_duration.record(time.perf_counter() - started)
        if duplicate:
            self._metrics.duplicates += 1
        return duplicate

    async def _publish(self, subject: str, alert: Alert, headers: dict[str, str]) -> bool:
        nc, js = self._nc, self._js
        if nc is None or js is None:
            raise UnavailableError("not connected to NATS")
        if not nc.is_connected:
            # Not buffered for a reconnect: nats-py leaks a slot of its pending-publish
            # bound whenever a buffered publish fails, and enough of them would stall
            # every later alert. The sender resends the 503.
            raise UnavailableError("not connected to NATS (reconnecting)")
        timeout = self._settings.publish_timeout
        # One deadline for the whole call, the wait for a pending-publish slot included
        # (publish_async's own `wait_stall` would cost a task per alert).
        try:
            async with asyncio.timeout(timeout):
                future = await js.publish_async(
                    subject, alert_encoder.encode(alert), stream=ALERTS_STREAM, headers=headers
                )
                ack = await future
        except TimeoutError as exc:
            raise UnavailableError(f"no acknowledgement from JetStream within {timeout}s") from exc
        except (ConnectionClosedError, OutboundBufferLimitError, NoStreamResponseError) as exc:
            raise UnavailableError(f"JetStream unavailable: {type(exc).__name__}") from exc
        except APIError as exc:
            raise UnavailableError(f"JetStream refused the message: {exc.description}") from exc
        return bool(ack.duplicate)

    async def ready(self) -> list[str]:
        """Why the ingress is not ready (empty when it is)."""
        if self._refused is not None:
            return [f"nats: {self._refused}"]
        if self._nc is None or self._js is None or not self._nc.is_connected:
            return ["nats: not connected"]
        try:
            missing = await provision.missing_streams(self._js, self._settings.topology())
        except (TimeoutError, APIError) as exc:
            return [f"nats: {type(exc).__name__}"]
        return [f"stream {name}: missing" for name in missing]
