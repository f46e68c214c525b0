"""The console's JSON API: Litestar controllers over the read models and NATS.

Every route needs the token (console.auth.api_guard); the OpenAPI document at
`/schema/openapi.json` is generated from these handlers' msgspec types. Lists are newest
first with an opaque `cursor` (the previous page's `next_cursor`). Nothing here returns
a secret: the read models hold none, and the settings are never served.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from console.auth import admitted, api_guard
from console.feed import encode
from console.runtime import Runtime, runtime
from contracts.risk import EVERY_ACCOUNT, Halt
from ops.platform import deadletters, halting, projections, queues
from ops.platform.projections import (
    AlertRow,
    BadCursorError,
    DeadLetterRow,
    LagRow,
    OrderRow,
    Page,
    PositionRow,
    TimelineEntry,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

Limit = Annotated[int, Parameter(ge=1, le=projections.MAX_LIMIT, description="rows per page")]
Cursor = Annotated[str | None, Parameter(description="the previous page's next_cursor")]


class AlertView(msgspec.Struct, frozen=True, kw_only=True):
    """An alert, its events in order, and its trace."""

    alert: AlertRow
    timeline: list[TimelineEntry]
    trace_id: str | None
    trace_url: str | None  # the Jaeger UI's page, when ALERTBRIDGE_JAEGER_URL is set


class ReplayAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """A DLQ entry sent to the workers again."""

    dlq_seq: int
    account: str
    alert_id: str
    replay: int  # the alert's replay round now
    stream_seq: int  # where ALERTS stored the replay
    note: str = deadletters.REPLAY_NOTE


class StatusView(msgspec.Struct, frozen=True, kw_only=True):
    """Queue health: the streams, the durable consumers, the DLQ, the projector's lag and
    the halts in force."""

    streams: list[queues.StreamStatus]
    consumers: list[queues.ConsumerStatus]
    dlq_depth: int
    missing: list[str]
    projector: list[LagRow]  # empty: no projections yet
    halts: list[halting.HaltRow]


class HaltRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Stop trading: one account, or every account when `account` is absent."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    account: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class ResumeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Resume trading: one account (its halt and its circuit breaker), or the global halt."""

    account: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class HaltAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What a halt or resume did, and the halts still in force after it."""

    account: str  # `*`: every account
    halted: bool
    kv_seq: int
    in_force: list[halting.HaltRow]


def _bad_cursor() -> HTTPException:
    return HTTPException(status_code=400, detail="cursor not recognised: start from page one")


async def halt(rt: Runtime, account: str | None, reason: str | None) -> HaltAnswer:
    """Halt (with a reason) or resume (reason None), then read the halts in force."""
    value = Halt(
        account=account or EVERY_ACCOUNT, halted=reason is not None, reason=reason or "",
        at=datetime.now(UTC),
    )  # fmt: skip
    seq = await halting.record(rt.js, value)
    left = await halting.read_halts(rt.client, rt.settings.nats_js_api)
    return HaltAnswer(account=value.account, halted=value.halted, kv_seq=seq, in_force=left)


# Seconds the console waits for a worker's replay (a replay is a few NATS round trips).
REPLAY_WAIT = 10.0


async def replay(rt: Runtime, dlq_seq: int) -> ReplayAnswer:
    """Have the workers replay one DLQ entry (404: none; 409: it cannot be replayed, and
    stays; 503: no worker answered). The console's role cannot store an alert itself
    (ops.platform.deadletters)."""
    try:
        event = await deadletters.request_replay(rt.client, dlq_seq, REPLAY_WAIT)
    except deadletters.NoEntryError as exc:
        raise NotFoundException(str(exc)) from None
    except deadletters.NoReplayerError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    except deadletters.DlqError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    return ReplayAnswer(
        dlq_seq=dlq_seq, account=event.account, alert_id=event.alert_id,
        replay=event.replay, stream_seq=event.stream_seq,
    )  # fmt: skip


async def status_of(rt: Runtime) -> StatusView:
    """Everything the queue health page shows."""
    found = await queues.status(rt.client, rt.settings.nats_js_api)
    try:
        with rt.views() as db:
            lag = projections.lag(db)
    except HTTPException:
        lag = []
    try:
        halts = await halting.read_halts(rt.client, rt.settings.nats_js_api)
    except halting.HaltsUnreadableError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    return StatusView(
        streams=found.streams, consumers=found.consumers, dlq_depth=found.dlq_depth,
        missing=found.missing, projector=lag, halts=halts,
    )  # fmt: skip


class AlertsController(Controller):
    """Alerts: lists with filters, and one alert's story."""

    path = "/api/alerts"
    guards = [api_guard]  # noqa: RUF012 - Litestar's declaration

    @get("/", summary="List alerts")
    async def list_alerts(
        self,
        state: State,
        account: FromQuery[str | None] = None,
        symbol: FromQuery[str | None] = None,
        status: FromQuery[str | None] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> Page[AlertRow]:
        """Alerts received in [since, until), newest first."""
        with runtime(state).views() as db:
            try:
                return projections.list_alerts(
                    db, account=account, symbol=symbol, status=status, since=since,
                    until=until, limit=limit, cursor=cursor,
                )  # fmt: skip
            except BadCursorError:
                raise _bad_cursor() from None

    @get("/{account:str}/{alert_id:str}", summary="One alert")
    async def get_alert(
        self, state: State, account: FromPath[str], alert_id: FromPath[str]
    ) -> AlertView:
        """An alert (ids are unique within an account), its timeline and its trace."""
        rt = runtime(state)
        with rt.views() as db:
            found = projections.get_alert(db, account, alert_id)
        if found is None:
            raise NotFoundException(f"no alert {alert_id!r} in account {account!r}")
        trace = found.alert.trace_id
        return AlertView(
            alert=found.alert, timeline=found.timeline, trace_id=trace,
            trace_url=rt.trace_url(trace),
        )  # fmt: skip


class ReadController(Controller):
    """Orders, positions and the dead letters, from the read models."""

    path = "/api"
    guards = [api_guard]  # noqa: RUF012 - Litestar's declaration

    @get("/orders", summary="List orders")
    async def list_orders(
        self,
        state: State,
        account: FromQuery[str | None] = None,
        symbol: FromQuery[str | None] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> Page[OrderRow]:
        """Orders the brokers took, newest first."""
        with runtime(state).views() as db:
            try:
                return projections.list_orders(
                    db, account=account, symbol=symbol, since=since, until=until,
                    limit=limit, cursor=cursor,
                )  # fmt: skip
            except BadCursorError:
                raise _bad_cursor() from None

    @get("/positions", summary="Positions and P&L")
    async def list_positions(
        self,
        state: State,
        account: FromQuery[str | None] = None,
        symbol: FromQuery[str | None] = None,
    ) -> list[PositionRow]:
        """Net position, average price and realized P&L per (account, symbol)."""
        with runtime(state).views() as db:
            return projections.list_positions(db, account=account, symbol=symbol)

    @get("/dlq", summary="List dead letters")
    async def list_dlq(
        self,
        state: State,
        account: FromQuery[str | None] = None,
        replayed: FromQuery[bool] = False,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> Page[DeadLetterRow]:
        """DLQ entries, newest first (`replayed`: also those already replayed)."""
        with runtime(state).views() as db:
            try:
                return projections.list_dead_letters(
                    db, account=account, include_replayed=replayed, limit=limit, cursor=cursor
                )
            except BadCursorError:
                raise _bad_cursor() from None


class ControlController(Controller):
    """Replays, halts and queue health: through NATS, as the console role."""

    path = "/api"
    guards = [api_guard]  # noqa: RUF012 - Litestar's declaration

    @post("/dlq/{dlq_seq:int}/replay", summary="Replay a DLQ entry", status_code=200)
    async def replay_entry(self, state: State, dlq_seq: FromPath[int]) -> ReplayAnswer:
        """Send the entry's alert to the workers again. Its age clock restarts at the
        replay; the broker idempotency key is kept, so an order is never doubled."""
        return await replay(runtime(state), dlq_seq)

    @get("/status", summary="Queue health")
    async def status(self, state: State) -> StatusView:
        """Streams, consumers (pending, redeliveries), DLQ depth, projector lag, halts."""
        return await status_of(runtime(state))

    @get("/halts", summary="Halts in force")
    async def halts(self, state: State) -> list[halting.HaltRow]:
        """Every halt in force (`*`: every account)."""
        rt = runtime(state)
        try:
            return await halting.read_halts(rt.client, rt.settings.nats_js_api)
        except halting.HaltsUnreadableError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None

    @post("/halt", summary="Halt trading", status_code=200)
    async def halt(self, state: State, data: JSONBody[HaltRequest]) -> HaltAnswer:
        """Stop trading now; alerts are still stored, and end rejected (replayable)."""
        return await halt(runtime(state), data.account, data.reason.strip() or "halted")

    @post("/resume", summary="Resume trading", status_code=200)
    async def resume(self, state: State, data: JSONBody[ResumeRequest]) -> HaltAnswer:
        """Resume the global halt, or one account (its halt and its circuit breaker)."""
        return await halt(runtime(state), data.account, None)

    @get("/events", summary="Live feed (Server-Sent Events)")
    async def events(self, request: Request[Any, Any, Any], state: State) -> ServerSentEvent:
        """`ready` once listening, then one `item` event (a FeedItem) per alert or event.
        A feed opened with the session cookie ends when that session does (logout, its
        lifetime), and keeps it from going idle meanwhile; one opened with the bearer
        token goes on."""
        rt = runtime(state)
        feed, sid = rt.feed, admitted(request).session
        # Let in by a session: it lives as long as that session; each check counts as use.
        alive = None if sid is None else partial(rt.access.cookie, sid)

        async def stream() -> AsyncIterator[ServerSentEventMessage]:
            async with feed.listening(alive) as queue:
                yield ServerSentEventMessage(event="ready", data="{}")
                while (found := await queue.get()) is not None:
                    yield ServerSentEventMessage(event="item", data=encode(found))

        return ServerSentEvent(stream())
