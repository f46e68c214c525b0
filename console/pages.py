"""The console's pages: server-rendered HTML (Jinja2, autoescaped) and one small script.

Every page needs the session cookie (console.auth.page_guard; without it, the login
form); every form POST also carries Litestar's CSRF token. A replay and a halt are
forms, so the pages work with the keyboard alone and without the script: the script
only adds the live feed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import Body, FromPath
from litestar.response import Redirect, Response, Template
from litestar.status_codes import HTTP_303_SEE_OTHER

from console import api
from console.auth import COOKIE, page_guard
from console.runtime import runtime
from ops.platform import deadletters, projections

if TYPE_CHECKING:
    from console.runtime import Runtime

FEED_ROWS = 50


class LoginForm(msgspec.Struct, frozen=True):
    """The login form."""

    token: str = ""


class HaltForm(msgspec.Struct, frozen=True):
    """The halt form (an empty account: every account)."""

    reason: str = ""
    account: str = ""


class ResumeForm(msgspec.Struct, frozen=True):
    """The resume form (an empty account: the global halt)."""

    account: str = ""


Form = RequestEncodingType.URL_ENCODED


def _page(name: str, **context: Any) -> Template:
    return Template(template_name=name, context=context)


def _see(path: str) -> Redirect:
    return Redirect(path=path, status_code=HTTP_303_SEE_OTHER)


class LoginController(Controller):
    """The login form, and logging out."""

    @get("/login", include_in_schema=False)
    async def form(self) -> Template:
        """The login form."""
        return _page("login.html", error=None)

    @post("/login", include_in_schema=False, status_code=HTTP_303_SEE_OTHER)
    async def login(
        self,
        request: Request[Any, Any, Any],
        state: State,
        data: Annotated[LoginForm, Body(media_type=Form)],
    ) -> Response[Any]:
        """Check the token; end the session this browser had (if any) and open a new one,
        its id in the cookie (Secure, HttpOnly, SameSite=Strict, gone after its lifetime)."""
        rt = runtime(state)
        if not rt.access.token_matches(data.token):
            return Template(
                template_name="login.html", context={"error": "wrong token"}, status_code=401
            )
        # One browser, one session: the one it had no longer lives on beside the new one.
        rt.access.sessions.close(request.cookies.get(COOKIE))
        sid = rt.access.sessions.open()
        answer = _see("/")
        answer.set_cookie(
            COOKIE, sid, path="/", max_age=math.ceil(rt.access.lifetime), secure=True,
            httponly=True, samesite="strict",
        )  # fmt: skip
        return answer

    @post("/logout", include_in_schema=False)
    async def logout(self, request: Request[Any, Any, Any], state: State) -> Redirect:
        """End the session here (a copy of its cookie is refused from now on); drop the
        cookie. No session needed (one that already ended still gets its cookie dropped);
        the CSRF token is, so no other site can log a browser out."""
        runtime(state).access.sessions.close(request.cookies.get(COOKIE))
        answer = _see("/login")
        answer.delete_cookie(COOKIE, path="/")
        return answer


class PagesController(Controller):
    """What a person sees."""

    guards = [page_guard]  # noqa: RUF012 - Litestar's declaration
    include_in_schema = False

    @get("/")
    async def feed(self, state: State) -> Template:
        """The latest alerts, and the live feed (console.js)."""
        with runtime(state).views() as db:
            latest = projections.list_alerts(db, limit=FEED_ROWS).items
        return _page("feed.html", alerts=latest)

    @get("/alerts/{account:str}/{alert_id:str}")
    async def alert(
        self, state: State, account: FromPath[str], alert_id: FromPath[str]
    ) -> Template:
        """One alert: what it asked for, where it got to, its timeline and trace."""
        rt = runtime(state)
        with rt.views() as db:
            found = projections.get_alert(db, account, alert_id)
        if found is None:
            raise NotFoundException(f"no alert {alert_id!r} in account {account!r}")
        return _page(
            "alert.html", alert=found.alert, timeline=found.timeline,
            trace_url=rt.trace_url(found.alert.trace_id),
        )  # fmt: skip

    @get("/dlq")
    async def dlq(self, state: State) -> Template:
        """The dead letters waiting for a decision."""
        with runtime(state).views() as db:
            entries = projections.list_dead_letters(db, include_replayed=False, limit=200)
        return _page("dlq.html", entries=entries.items, note=deadletters.REPLAY_NOTE)

    @get("/dlq/{dlq_seq:int}/replay")
    async def confirm_replay(self, state: State, dlq_seq: FromPath[int]) -> Template:
        """Say what a replay does, and ask."""
        entry = await _entry(runtime(state), dlq_seq)
        return _page("replay.html", entry=entry, note=deadletters.REPLAY_NOTE)

    @post("/dlq/{dlq_seq:int}/replay", status_code=HTTP_303_SEE_OTHER)
    async def replay(self, state: State, dlq_seq: FromPath[int]) -> Redirect:
        """Replay it, then show the alert."""
        done = await api.replay(runtime(state), dlq_seq)
        return _see(f"/alerts/{_path(done.account)}/{_path(done.alert_id)}?replayed={done.replay}")

    @get("/positions")
    async def positions(self, state: State) -> Template:
        """Positions and realized P&L, per account."""
        with runtime(state).views() as db:
            rows = projections.list_positions(db)
        accounts: dict[str, list[projections.PositionRow]] = {}
        for row in rows:
            accounts.setdefault(row.account, []).append(row)
        return _page("positions.html", accounts=accounts)

    @get("/health")
    async def health(self, state: State) -> Template:
        """Queue health, the projector's lag, and the kill switch."""
        return _page("health.html", status=await api.status_of(runtime(state)))

    @post("/halt", status_code=HTTP_303_SEE_OTHER)
    async def halt(
        self, state: State, data: Annotated[HaltForm, Body(media_type=Form)]
    ) -> Redirect:
        """Halt trading (a reason is required)."""
        if not data.reason.strip():
            raise HTTPException(status_code=400, detail="say why you halt trading")
        await api.halt(runtime(state), data.account.strip() or None, data.reason.strip())
        return _see("/health")

    @post("/resume", status_code=HTTP_303_SEE_OTHER)
    async def resume(
        self, state: State, data: Annotated[ResumeForm, Body(media_type=Form)]
    ) -> Redirect:
        """Resume trading."""
        await api.halt(runtime(state), data.account.strip() or None, None)
        return _see("/health")


async def _entry(rt: Runtime, dlq_seq: int) -> deadletters.DeadLetter:
    try:
        return await deadletters.entry(rt.js, dlq_seq)
    except deadletters.NoEntryError as exc:
        raise NotFoundException(f"{exc} (replayed or purged already?)") from None


def _path(value: str) -> str:
    return quote(value, safe="")
