"""The ingress's side of NATS: one connection, publish with dedup, bounded in time.

Identity (docs/security.md): an alert's `Nats-Msg-Id` is its id scoped to its account
(`contracts.messages.alert_msg_id`). A body without `id` is known by its hash only while
the resend window lasts: the first sending claims `resends.<account>.<hash>` in the
`RESENDS` stream (first writer wins: `Nats-Expected-Last-Subject-Sequence: 0`) with a
new id, and a resend within the window finds and reuses that id, in any ingress
process. The stream's `max_age` is the window; after it the key is free again and the
same body is a new alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

import msgspec
from nats.errors import ConnectionClosedError, OutboundBufferLimitError
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from contracts import tracing
from contracts.headers import MSG_ID
from contracts.messages import Alert, alert_encoder, alert_msg_id
from contracts.subjects import ALERTS_STREAM, RESENDS_STREAM, alert_subject, resend_subject
from ops.platform import provision
from ops.platform.acks import Acks
from ops.platform.natsconn import NatsAuthError, connect, jetstream

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from ingress.settings import IngressSettings
    from ingress.telemetry import IngressMetrics

log = logging.getLogger(__name__)

# JetStream's "wrong last sequence": the resend key exists already.
_KEY_TAKEN: Final = 10071
_FIRST_WRITE: Final = {"Nats-Expected-Last-Subject-Sequence": "0"}
_EXPECTED_STREAM: Final = "Nats-Expected-Stream"
# Seconds a starting ingress waits for its first connection before it listens (less
# than TradingView's 3 s); past it, it listens without NATS and answers 503.
FIRST_CONNECT_WAIT: Final = 2.0


# What the ingress writes to; /readyz checks they exist (by name only: STREAM.NAMES).
INGRESS_STREAMS: Final = (ALERTS_STREAM, RESENDS_STREAM)


class UnavailableError(Exception):
    """The alert could not be stored in time; the sender should retry (503)."""


class Publisher:
    """Publishes alerts to `ALERTS` and reports whether the server already had them."""

    def __init__(self, settings: IngressSettings, instruments: IngressMetrics) -> None:
        self._settings = settings
        self._metrics = instruments
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._acks: Acks | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._refused: str | None = None

    async def start(self) -> None:
        """Connect in the background: the ingress answers (503) even while NATS is down.

        The first connection is waited for a moment (`FIRST_CONNECT_WAIT`): the server
        listens once this returns, so a new or replacement process of a pool takes its
        first requests connected (a 200) instead of in the instant before (a 503, which
        TradingView resends only 5 s later).
        """
        self._connecting = asyncio.create_task(self._connect_until_up())
        await asyncio.wait({self._connecting}, timeout=FIRST_CONNECT_WAIT)

    async def _connect_until_up(self) -> None:
        # connect() retries forever (max_reconnect_attempts=-1), first connect included,
        # unless the server refuses our credentials: then say so and stay unready (503).
        try:
            self._nc = await connect(self._settings, name="alertbridge-ingress")
        except NatsAuthError as exc:
            self._refused = str(exc)
            log.error("%s", exc)
            return
        self._js = jetstream(self._nc, self._settings)
        # A deadline is kept to within a tenth of the publish timeout (50 ms at most).
        sweep_every = min(0.05, self._settings.publish_timeout / 10)
        self._acks = Acks(self._nc, timeout=self._settings.publish_timeout, sweep_every=sweep_every)

    async def stop(self) -> None:
        """Flush what is in flight and close."""
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()  # the PubAcks of what is in flight come in first

    async def publish(
        self, alert: Alert, *, digest: str | None = None, trace: dict[str, str] | None = None
    ) -> tuple[str, bool]:
        """Store the alert; return (its id, whether it was a duplicate). `digest`: the
        hash of a body without `id`, whose id is then the one its first sending got
        within the resend window. `trace`: the trace context headers the alert carries
        (default: the current context's). Raise UnavailableError."""
        try:
            alert_id, duplicate = await self._store(alert, digest, trace)
        except UnavailableError:
            self._metrics.unavailable += 1
            raise
        if duplicate:
            self._metrics.duplicates += 1
        return alert_id, duplicate

    async def _store(
        self, alert: Alert, digest: str | None, trace: dict[str, str] | None
    ) -> tuple[str, bool]:
        js, acks = self._connected()
        timeout = self._settings.publish_timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        # One deadline for the whole call, the resend-window claim included.
        try:
            if digest is not None:
                async with asyncio.timeout(timeout):
                    alert = msgspec.structs.replace(
                        alert, id=await self._resend_id(js, alert, digest)
                    )
            headers = {
                MSG_ID: alert_msg_id(alert.account, alert.id),
                _EXPECTED_STREAM: ALERTS_STREAM,
            }
            if trace is None:
                tracing.inject(headers)
            else:
                headers.update(trace)
            ack = await acks.publish(
                alert_subject(alert.account, alert.symbol),
                alert_encoder.encode(alert),
                headers,
                started + timeout,
            )
        except TimeoutError as exc:
            raise UnavailableError(f"no acknowledgement from JetStream within {timeout}s") from exc
        except (ConnectionClosedError, OutboundBufferLimitError, NoStreamResponseError) as exc:
            raise UnavailableError(f"JetStream unavailable: {type(exc).__name__}") from exc
        except APIError as exc:
            raise UnavailableError(f"JetStream refused the message: {exc.description}") from exc
        self._metrics.publish_duration.record(loop.time() - started)
        return alert.id, ack.duplicate

    def _connected(self) -> tuple[JetStreamContext, Acks]:
        nc, js, acks = self._nc, self._js, self._acks
        if nc is None or js is None or acks is None:
            raise UnavailableError("not connected to NATS")
        if not nc.is_connected:
            # Not buffered for a reconnect: the sender resends the 503, and an alert
            # buffered now could still be stored long after that answer.
            raise UnavailableError("not connected to NATS (reconnecting)")
        return js, acks

    async def _resend_id(self, js: JetStreamContext, alert: Alert, digest: str) -> str:
        """The id of the body `digest` in this resend window: a new one (`<digest>-<ms of
        receipt>`) if this is its first sending, else the one the first sending got."""
        subject = resend_subject(alert.account, digest)
        fresh = f"{digest}-{int(alert.received_at.timestamp() * 1000)}"
        while True:  # bounded by the caller's deadline
            try:
                # Not publish_async: nats-py 2.16 raises a refused one's error inside its
                # reply callback, and the future never resolves.
                await js.publish(
                    subject,
                    fresh.encode(),
                    timeout=self._settings.publish_timeout,
                    stream=RESENDS_STREAM,
                    headers=dict(_FIRST_WRITE),
                )
            except APIError as exc:
                if exc.err_code != _KEY_TAKEN:
                    raise
            else:
                return fresh
            try:
                first = await js.get_msg(RESENDS_STREAM, subject=subject, direct=True)
            except NotFoundError:
                continue  # the window ended in between: the key is free again
            return (first.data or b"").decode()

    async def ready(self) -> list[str]:
        """Why the ingress is not ready (empty when it is)."""
        if self._refused is not None:
            return [f"nats: {self._refused}"]
        if self._nc is None or self._js is None or not self._nc.is_connected:
            return ["nats: not connected"]
        try:
            missing = await provision.missing_streams(
                self._js, self._settings.topology(), INGRESS_STREAMS
            )
        except (TimeoutError, APIError) as exc:
            return [f"nats: {type(exc).__name__}"]
        return [f"stream {name}: missing" for name in missing]
