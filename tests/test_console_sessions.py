"""The console's login sessions and the live feed that lives as long as one.

On a fake clock (console.sessions.Sessions, console.feed.Feed): a session ends exactly at
its lifetime however busy, and exactly at its idle time since its last use; a login past
the limit evicts the oldest login; the sessions past their time are cleared at each login
before any eviction; closing what is no session changes nothing; an open feed keeps its
session from idling until its lifetime ends both. A session setting that is no time
stops the process (exit 2, naming the variable).

As an attacker sees the running `python -m console`: a session cookie copied before
logout is refused after it, and so is one from before a restart (with the same token or
a rotated one) and any forged one; logging one session out leaves another alone, and
logging in again ends the session the browser had. In real time, twice: a session in use
ends at its lifetime; a watched one (its live feed open) outlives the idle time that ends
one left alone, then ends at its lifetime, feed and all. A feed opened with a session's
cookie ends when that session logs out; one the token let in goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
import msgspec
import pytest

from console.auth import COOKIE
from console.feed import Feed, FeedItem
from console.sessions import LONGEST_ID, Sessions
from console.settings import ConsoleSettings
from contracts.messages import Expired
from ops.platform.settings import SettingsError, load
from tests.console_support import ConsoleProcess, Visitor, api_status, page_status
from tests.secured import Secured

TOKEN = "console-token-for-the-session-tests-01234"
KEY = b"k" * 32
HOURS = "ALERTBRIDGE_CONSOLE_SESSION_HOURS"
IDLE = "ALERTBRIDGE_CONSOLE_SESSION_IDLE_MINUTES"


class Clock:
    """A clock that moves when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


# --- on a fake clock ----------------------------------------------------------------------


def test_a_session_ends_exactly_at_its_lifetime_however_busy(clock: Clock) -> None:
    sessions = Sessions(KEY, lifetime=100, idle=30, clock=clock)
    sid, born = sessions.open(), clock.now
    while clock.now < born + 99.5:  # a request every 20 s: never idle
        clock.now = min(clock.now + 20, born + 99.5)
        assert sessions.check(sid), clock.now - born
    clock.now = born + 100  # `>=`: the lifetime itself is past it
    assert not sessions.check(sid) and len(sessions) == 0
    clock.now = born  # gone for good: no clock brings it back
    assert not sessions.check(sid)


def test_a_session_ends_exactly_at_its_idle_time_since_its_last_use(clock: Clock) -> None:
    sessions = Sessions(KEY, lifetime=1_000, idle=10, clock=clock)
    used, left = sessions.open(), sessions.open()
    clock.now += 9.5  # just before: each use restarts the idle time
    assert sessions.check(used)
    clock.now += 0.5  # exactly `idle` after the login: `left` ends, `used` (used at 9.5) not
    assert not sessions.check(left) and sessions.check(used)
    clock.now += 10  # exactly `idle` after its last use
    assert not sessions.check(used) and len(sessions) == 0


def test_past_the_limit_the_oldest_login_is_evicted_even_in_use(clock: Clock) -> None:
    """Eviction goes by login, not by use: a flood of logins cannot keep one alive."""
    sessions = Sessions(KEY, lifetime=3_600, idle=3_600, limit=3, clock=clock)
    first, second, third = sessions.open(), sessions.open(), sessions.open()
    assert sessions.check(first)  # in use, and still the oldest login
    fourth = sessions.open()
    assert len(sessions) == 3
    assert [sessions.check(s) for s in (first, second, third, fourth)] == [False, True, True, True]
    fifth = sessions.open()
    assert [sessions.check(s) for s in (second, third, fourth, fifth)] == [False, True, True, True]
    assert not Sessions(b"j" * 32, lifetime=3_600, idle=3_600).check(fifth)  # another key


def test_sessions_past_their_time_are_cleared_at_login_before_any_eviction(clock: Clock) -> None:
    """The dead never take a live session's place: the idle one goes, not the oldest."""
    sessions = Sessions(KEY, lifetime=3_600, idle=10, limit=2, clock=clock)
    oldest = sessions.open()
    clock.now += 1
    idle = sessions.open()
    clock.now += 5
    assert sessions.check(oldest)  # used at +6: live until +16
    clock.now += 5  # +11: `idle` (opened at +1) is 10 s unused
    newest = sessions.open()
    assert len(sessions) == 2
    assert sessions.check(oldest) and sessions.check(newest) and not sessions.check(idle)
    clock.now += 3_600  # every one past its lifetime: a login clears them all
    sessions.open()
    assert len(sessions) == 1


def test_closing_what_is_no_session_changes_nothing(clock: Clock) -> None:
    sessions = Sessions(KEY, lifetime=3_600, idle=3_600, clock=clock)
    sid = sessions.open()
    for other in (None, "", secrets.token_urlsafe(32), "x" * (LONGEST_ID + 1), sid.swapcase()):
        sessions.close(other)
        assert not sessions.check(other)
    assert len(sessions) == 1 and sessions.check(sid)
    sessions.close(sid)
    sessions.close(sid)  # twice: nothing more happens
    assert len(sessions) == 0 and not sessions.check(sid)


async def test_an_open_feed_keeps_its_session_from_idling_until_its_lifetime(
    clock: Clock,
) -> None:
    """The API's feed asks its session once a poll (`Feed.sweep`), and each ask is a use."""
    sessions = Sessions(KEY, lifetime=100, idle=10, clock=clock)
    watched, alone = sessions.open(), sessions.open()
    born = clock.now
    feed = Feed(lambda: contextlib.closing(sqlite3.connect(":memory:")))  # never polled here
    async with feed.listening(partial(sessions.check, watched)) as queue:
        while clock.now < born + 99:
            clock.now += 3  # a poll every 3 s: the feed goes on, never idle
            feed.sweep()
            assert queue.empty(), clock.now - born
        assert not sessions.check(alone)  # unwatched, it idled out long ago
        clock.now = born + 100
        feed.sweep()
        assert queue.get_nowait() is None  # the end of its stream
    assert not sessions.check(watched)


# --- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf", "Infinity", "1e400"])
@pytest.mark.parametrize("var", [HOURS, IDLE])
def test_a_session_limit_that_is_no_time_stops_the_console(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        load(ConsoleSettings, {var: value})
    assert load(ConsoleSettings, {}).console_session_hours == 12


@pytest.mark.parametrize(("var", "value"), [(HOURS, "inf"), (IDLE, "0")])
def test_a_bad_session_setting_stops_the_process_with_exit_2(
    secured: Secured, tmp_path: Path, var: str, value: str
) -> None:
    process = ConsoleProcess(secured, tmp_path, TOKEN, **{var: value})
    assert process.exits() == 2, process.output()
    assert f"console: {var}" in process.output() and "Traceback" not in process.output()


# --- the running console ------------------------------------------------------------------


@pytest.fixture(scope="module")
def console(secured: Secured, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    process = ConsoleProcess(secured, tmp_path_factory.mktemp("console"), TOKEN).start()
    yield process
    assert process.stop(), process.output()


@pytest.fixture
async def http(console: ConsoleProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console.url, timeout=10) as client:
        yield client


async def test_a_cookie_copied_before_logout_is_refused_after_it(http: httpx.AsyncClient) -> None:
    victim = Visitor(http)
    copied = await victim.log_in(TOKEN)
    assert await page_status(http, copied) == "page" and await api_status(http, copied) == 200
    answer = await victim.log_out()
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert COOKIE not in victim.cookies  # the browser was told to drop it
    assert await page_status(http, copied) == "login"
    assert await api_status(http, copied) == 401
    assert await victim.log_in(TOKEN) != copied  # a new login is a new session


async def test_logging_one_session_out_leaves_the_other(http: httpx.AsyncClient) -> None:
    one, other = Visitor(http), Visitor(http)
    first, second = await one.log_in(TOKEN), await other.log_in(TOKEN)
    assert first != second
    assert (await one.log_out()).status_code == 303
    assert await page_status(http, first) == "login" and await api_status(http, first) == 401
    assert await page_status(http, second) == "page" and await api_status(http, second) == 200


async def test_logging_in_again_ends_the_session_the_browser_had(http: httpx.AsyncClient) -> None:
    browser, other = Visitor(http), Visitor(http)
    before, kept = await browser.log_in(TOKEN), await other.log_in(TOKEN)
    after = await browser.log_in(TOKEN)  # its cookie sent along, as a browser does
    assert after != before
    assert await page_status(http, before) == "login" and await api_status(http, before) == 401
    assert await page_status(http, after) == "page" and await page_status(http, kept) == "page"


def _forgeries(real: str) -> dict[str, str]:
    old = hmac.new(TOKEN.encode(), b"alertbridge console session v1", hashlib.sha256)
    return {
        "random": secrets.token_urlsafe(32),
        "the token's HMAC, as cookies once held": old.hexdigest(),
        "the token itself": TOKEN,
        "a real one, its case changed": real.swapcase(),
        "a real one, one character more": real + "A",
        "a real one, one character less": real[:-1],
        "a real one, twice": real * 2,
        "empty": "",
    }


@pytest.mark.parametrize("forgery", list(_forgeries("x")))
async def test_a_forged_session_cookie_is_refused(http: httpx.AsyncClient, forgery: str) -> None:
    real = await Visitor(http).log_in(TOKEN)
    forged = _forgeries(real)[forgery]
    assert forged != real
    assert await page_status(http, forged) == "login"
    assert await api_status(http, forged) == 401
    assert await page_status(http, real) == "page"  # the real one still is one


async def test_a_restart_logs_everyone_out_and_a_rotated_token_too(
    secured: Secured, tmp_path: Path
) -> None:
    process = ConsoleProcess(secured, tmp_path, TOKEN).start()
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=10) as client:
            before = await Visitor(client).log_in(TOKEN)
            assert process.stop()
            process.start()
            assert await page_status(client, before) == "login"
            kept = await Visitor(client).log_in(TOKEN)
            assert process.stop()
            rotated = TOKEN[::-1]
            process.start(rotated)
            assert await page_status(client, kept) == "login"
            assert await api_status(client, kept) == 401
            assert (await Visitor(client).try_log_in(TOKEN)).status_code == 401
            assert await page_status(client, await Visitor(client).log_in(rotated)) == "page"
    finally:
        process.stop()
    assert TOKEN not in process.output() and rotated not in process.output()


# --- in real time: the settings as the process reads them -----------------------------------
# The server opens a session somewhere between a test's `log_in` call and its answer: the
# clock read before the call bounds the session's end from below, the one after from above.

ENDS_WITHIN = 5.0  # seconds: one poll (console.feed.POLL) and the slack of a busy machine


async def test_a_session_in_use_ends_at_its_lifetime(secured: Secured, tmp_path: Path) -> None:
    limit = 2.0  # seconds
    process = ConsoleProcess(secured, tmp_path, TOKEN, **{HOURS: str(limit / 3_600)}).start()
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=10) as client:
            before = time.monotonic()
            cookie = await Visitor(client).log_in(TOKEN)
            after = time.monotonic()
            while await page_status(client, cookie) == "page":  # a request every 0.2 s
                assert time.monotonic() - after < limit + ENDS_WITHIN, "it outlived its lifetime"
                await asyncio.sleep(0.2)
            assert time.monotonic() - before >= limit
            assert await api_status(client, cookie) == 401
    finally:
        assert process.stop(), process.output()


Lines = AsyncIterator[str]


def _cookie(sid: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={sid}"}


@contextlib.asynccontextmanager
async def _feed(http: httpx.AsyncClient, headers: dict[str, str]) -> AsyncIterator[Lines]:
    """GET /api/events; its lines after `ready`."""
    async with http.stream("GET", "/api/events", headers=headers) as answer:
        assert answer.status_code == 200, await answer.aread()
        lines = answer.aiter_lines()
        async for line in lines:
            if line == "event: ready":
                break
        yield lines


async def _drain(lines: Lines) -> None:
    """Until the stream ends: cleanly, or httpx raises (a connection cut mid-stream)."""
    async for _ in lines:
        pass


async def _next_item(lines: Lines) -> FeedItem:
    """The next `item` event's FeedItem (an AssertionError: the feed ended first)."""
    event = ""
    async for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == "item":
            return msgspec.json.decode(line.removeprefix("data: "), type=FeedItem)
    raise AssertionError("the feed ended")


async def test_a_watched_session_outlives_the_idle_time_and_ends_at_its_lifetime(
    secured: Secured, tmp_path: Path
) -> None:
    """A person watching the live page is not idle; one who left is; the lifetime ends
    the watched session anyway, and its feed with it."""
    lifetime, idle = 8.0, 2.0  # seconds
    process = ConsoleProcess(
        secured, tmp_path, TOKEN, **{HOURS: str(lifetime / 3_600), IDLE: str(idle / 60)}
    ).start()
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=10) as client:
            alone = await Visitor(client).log_in(TOKEN)
            before = time.monotonic()
            watched = await Visitor(client).log_in(TOKEN)
            after = time.monotonic()
            async with _feed(client, _cookie(watched)) as lines:
                ended = asyncio.create_task(_drain(lines))
                await asyncio.sleep(2.5 * idle)  # no request but the feed: what is tested
                assert not ended.done(), "the feed ended while it was watched"
                assert await page_status(client, alone) == "login"  # its first request since
                assert await page_status(client, watched) == "page"
                await asyncio.wait_for(ended, after + lifetime + ENDS_WITHIN - time.monotonic())
                assert time.monotonic() - before >= lifetime
            assert await page_status(client, watched) == "login"
            assert await api_status(client, watched) == 401
    finally:
        assert process.stop(), process.output()


# --- the live feed ends with the session that opened it ------------------------------------


def _expired(alert_id: str) -> Expired:
    return Expired(
        alert_id=alert_id, account="a", symbol="NASDAQ:AAPL", at=datetime.now(UTC),
        age=99.0, max_age=60.0, attempts=1, stream_seq=1,
    )  # fmt: skip


async def test_a_live_feed_ends_when_its_session_logs_out(
    console: ConsoleProcess, http: httpx.AsyncClient
) -> None:
    """Another browser logs the session out: its open feed ends; another session's goes on."""
    victim, other = Visitor(http), Visitor(http)
    cookie, kept = await victim.log_in(TOKEN), await other.log_in(TOKEN)
    async with _feed(http, _cookie(cookie)) as lines, _feed(http, _cookie(kept)) as others:
        assert (await victim.log_out()).status_code == 303  # the form, in another request
        await asyncio.wait_for(_drain(lines), ENDS_WITHIN)
        console.project(_expired("after-the-logout"))
        item = await asyncio.wait_for(_next_item(others), ENDS_WITHIN)
        assert (item.kind, item.alert_id) == ("expired", "after-the-logout")
    assert await api_status(http, cookie) == 401 and await api_status(http, kept) == 200


async def test_a_live_feed_the_token_let_in_goes_on(
    console: ConsoleProcess, http: httpx.AsyncClient
) -> None:
    """The token does not end, so neither does its feed: not when a session cookie sent
    along with it logs out, nor through several polls."""
    visitor = Visitor(http)
    sid = await visitor.log_in(TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}", **_cookie(sid)}
    async with _feed(http, headers) as lines:
        assert (await visitor.log_out()).status_code == 303
        assert await api_status(http, sid) == 401  # that session is over
        # The poll that finds the item asks the feed's listeners first (Feed.sweep): had the
        # cookie let this feed in, that poll would end it before the item.
        console.project(_expired("for-the-token"))
        item = await asyncio.wait_for(_next_item(lines), ENDS_WITHIN)
        assert (item.kind, item.alert_id) == ("expired", "for-the-token")
