"""The console's NATS role, on a real nats-server running deploy/nats-server.conf.

It does its whole job as its own user in its own account (replay a dead letter, halt
and resume, read the queues' state) without one refusal; then every door it must not
have is tried: forging an execution event or a dead letter, tripping a breaker, reading
an event, pulling from a consumer, creating, deleting or purging anything, listening to
alerts, events, dead letters or another role's replies.
Each attempt must fail and leave the streams as they were.

Its HTTP side, as an attacker sees the running `python -m console`: a session cookie
copied before logout is refused after it, and so is one past its lifetime or idle time,
one from before a restart (with the same token or a rotated one) and any forged one (a
random value, the HMAC of the token that cookies once held, a real one with its case
changed); logging one session out leaves another alone. A live feed opened with a
session's cookie ends when that session does (logout, lifetime) and keeps it from going
idle meanwhile; one opened with the token goes on. Odd paths under /static (a NUL
byte, an encoded `..`) are a 404, never a 500 or a traceback, and never a file from
elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from console.auth import COOKIE
from console.feed import QUEUE, Feed, FeedItem
from console.sessions import Sessions
from console.settings import ConsoleSettings
from contracts.headers import MSG_ID, DeadLetterHeaders
from contracts.messages import (
    EVENT_KINDS,
    Expired,
    Replayed,
    alert_decoder,
    event_decoder,
    event_encoder,
)
from contracts.risk import HALTS_STREAM, Halt, breaker_subject
from contracts.subjects import (
    ALERTS_STREAM,
    DLQ_STREAM,
    EVENTS_STREAM,
    alert_subject,
    dlq_subject,
    event_subject,
)
from contracts.topology import NOTIFIER, partition_durable
from ops.platform import deadletters, halting, queues
from ops.platform.projections import micros
from ops.platform.settings import DEFAULT_JS_API, ROLE_JS_API, SettingsError, load
from tests.console_support import ConsoleProcess, Visitor, api_status, page_status, raw_get
from tests.secured import DENIED_WITHIN, Secured, publish_alert
from tests.workers import make_alert

DENIED = (TimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)


def _expired(alert_id: str) -> Expired:
    return Expired(
        alert_id=alert_id, account="a", symbol="NASDAQ:AAPL", at=datetime.now(UTC),
        age=99.0, max_age=60.0, attempts=1, stream_seq=1,
    )  # fmt: skip


async def _dead_letter(ops: JetStreamContext, alert_id: str) -> int:
    """An alert in ALERTS and its DLQ entry, as the worker writes them; the DLQ sequence."""
    alert = make_alert(alert_id)
    seq = await publish_alert(ops, alert)
    why = DeadLetterHeaders(
        reason="rejected: halted", deliveries=1, stream_seq=seq,
        subject=alert_subject(alert.account, alert.symbol), at=datetime.now(UTC).isoformat(),
    )  # fmt: skip
    ack = await ops.publish(
        dlq_subject(alert.account, alert.symbol),
        msgspec.json.encode(alert),
        headers=why.to_headers(),
    )
    return ack.seq


async def test_the_console_does_its_whole_job(
    secured: Secured, as_console: Client, as_worker: Client, as_ops: JetStreamContext
) -> None:
    before = len(secured.violations("console"))
    js = secured.js("console", as_console)
    # A replay: read the entry, store the alert again, record it, remove the entry.
    dlq_seq = await _dead_letter(as_ops, "dead")
    entry = await deadletters.entry(js, dlq_seq)
    assert entry.alert_id == "dead" and entry.reason == "rejected: halted"
    done = await deadletters.replay(js, dlq_seq)
    assert (done.alert_id, done.replay, done.dlq_seq) == ("dead", 1, dlq_seq)
    stored = await as_ops.get_msg(ALERTS_STREAM, seq=done.stream_seq)
    assert alert_decoder.decode(stored.data or b"").replay == 1
    last = await as_ops.get_last_msg(EVENTS_STREAM, "events.replayed.>")
    recorded = event_decoder.decode(last.data or b"")
    assert isinstance(recorded, Replayed) and recorded.alert_id == "dead"
    assert (await as_ops.stream_info(DLQ_STREAM)).state.messages == 0
    with pytest.raises(deadletters.NoEntryError):
        await deadletters.replay(js, dlq_seq)  # gone: the same replay cannot run twice
    # The kill switch: halt one account, see it, resume it.
    await halting.record(js, Halt(account="a", halted=True, reason="test", at=datetime.now(UTC)))
    (row,) = await halting.read_halts(as_console, ROLE_JS_API)
    assert (row.account, row.reason) == ("a", "test")
    await halting.record(js, Halt(account="a", halted=False, at=datetime.now(UTC)))
    assert await halting.read_halts(as_console, ROLE_JS_API) == []
    # Queue health.
    found = await queues.status(as_console, ROLE_JS_API)
    assert found.missing == [] and {s.name for s in found.streams} >= {ALERTS_STREAM, DLQ_STREAM}
    assert partition_durable(0) in {c.name for c in found.consumers}
    await as_console.flush()
    assert secured.violations("console")[before:] == []


async def _fetch(js: JetStreamContext, stream: str, durable: str) -> object:
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    try:
        return await sub.fetch(1, timeout=DENIED_WITHIN)
    finally:
        await sub.unsubscribe()


def _attempts() -> dict[str, Callable[[JetStreamContext], Awaitable[object]]]:
    """What the console must not do."""
    forged = event_encoder.encode(_expired("forged"))
    trip = msgspec.json.encode(Halt(account="a", halted=True, at=datetime.now(UTC)))
    return {
        "forge an execution event": lambda js: js.publish(
            event_subject("executed", "a", "X"), forged
        ),
        "forge an expiry": lambda js: js.publish(event_subject("expired", "a", "X"), forged),
        "forge a dead letter": lambda js: js.publish("dlq.alerts.a.X", b"{}"),
        "trip a breaker": lambda js: js.publish(breaker_subject("a"), trip),
        "write a risk ledger": lambda js: js.publish("$KV.LIMITS.ledger.a", b"{}"),
        "read an event": lambda js: js.get_msg(EVENTS_STREAM, seq=1, direct=True),
        "read an event (get)": lambda js: js.get_msg(EVENTS_STREAM, seq=1),
        "read a dead letter (get)": lambda js: js.get_msg(DLQ_STREAM, seq=1),
        "pull a partition": lambda js: _fetch(js, ALERTS_STREAM, partition_durable(0)),
        "pull the notifier's events": lambda js: _fetch(js, EVENTS_STREAM, NOTIFIER),
        "create a consumer on EVENTS": lambda js: js.add_consumer(
            EVENTS_STREAM, ConsumerConfig(durable_name="spy")
        ),
        "delete a consumer": lambda js: js.delete_consumer(EVENTS_STREAM, NOTIFIER),
        "purge the DLQ": lambda js: js.purge_stream(DLQ_STREAM),
        "purge the halts": lambda js: js.purge_stream(HALTS_STREAM),
        "delete EVENTS": lambda js: js.delete_stream(EVENTS_STREAM),
        "delete an alert": lambda js: js.delete_msg(ALERTS_STREAM, 1),
        "delete an event": lambda js: js.delete_msg(EVENTS_STREAM, 1),
    }


@pytest.mark.parametrize("prefix", [ROLE_JS_API, DEFAULT_JS_API])
@pytest.mark.parametrize("attempt", list(_attempts()))
async def test_the_console_cannot(
    secured: Secured,
    as_console: Client,
    as_worker: Client,
    as_ops: JetStreamContext,
    attempt: str,
    prefix: str,
) -> None:
    await publish_alert(as_ops, make_alert("there-to-be-read"))
    await secured.js("worker", as_worker).publish(
        event_subject("expired", "a", "X"), event_encoder.encode(_expired("real"))
    )
    await as_ops.publish("dlq.alerts.a.X", b"dead")
    names = (ALERTS_STREAM, EVENTS_STREAM, DLQ_STREAM, HALTS_STREAM)
    streams = {name: await as_ops.stream_info(name) for name in names}
    consumers = len(await as_ops.consumers_info(EVENTS_STREAM))
    with pytest.raises(DENIED):
        await asyncio.wait_for(
            _attempts()[attempt](as_console.jetstream(prefix=prefix, timeout=0.5)), 1
        )
    for name, before in streams.items():
        after = await as_ops.stream_info(name)
        assert after.state.messages == before.state.messages, name  # nothing in, nothing out
        assert after.config == before.config, name
    assert len(await as_ops.consumers_info(EVENTS_STREAM)) == consumers
    partition = await as_ops.consumer_info(ALERTS_STREAM, partition_durable(0))
    assert partition.num_ack_pending == 0 and partition.delivered.stream_seq == 0


@pytest.mark.parametrize("subject", ["events.>", "alerts.in.>", "dlq.alerts.>", "_INBOX.>"])
async def test_the_console_cannot_listen_in(
    secured: Secured, as_console: Client, as_ops: JetStreamContext, subject: str
) -> None:
    """Neither events, alerts nor dead letters as they pass, nor another role's replies."""
    sub = await as_console.subscribe(subject)
    await as_console.flush()
    await publish_alert(as_ops, make_alert("passing-by"))
    await as_ops.publish("dlq.alerts.a.X", b"dead", headers={MSG_ID: "listen-in"})
    await as_ops.publish(event_subject("expired", "a", "X"), event_encoder.encode(_expired("x")))
    await secured.refused("console", "Subscription", subject)
    with pytest.raises(TimeoutError):
        await sub.next_msg(timeout=DENIED_WITHIN)


# --- its HTTP side: sessions and static files ------------------------------------------

TOKEN = "console-token-for-the-security-tests-0123"


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


@pytest.mark.parametrize(
    ("setting", "used"),
    [
        ("ALERTBRIDGE_CONSOLE_SESSION_HOURS", True),
        ("ALERTBRIDGE_CONSOLE_SESSION_IDLE_MINUTES", False),
    ],
)
async def test_a_session_ends_after_its_lifetime_or_idle_time(
    secured: Secured, tmp_path: Path, setting: str, used: bool
) -> None:
    """The lifetime ends a session however busy; the idle time ends one left alone."""
    limit = 2.0  # seconds
    value = limit / 3_600 if setting.endswith("HOURS") else limit / 60
    process = ConsoleProcess(secured, tmp_path, TOKEN, **{setting: str(value)}).start()
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=10) as client:
            cookie = await Visitor(client).log_in(TOKEN)
            born = time.monotonic()
            if used:  # in use all along, a request every 0.2 s, until refused
                while await page_status(client, cookie) == "page":
                    assert time.monotonic() - born < limit + 5, "the session outlived its lifetime"
                    await asyncio.sleep(0.2)
                assert time.monotonic() - born >= limit
            else:  # in use for longer than the idle time, then left alone
                while time.monotonic() - born < 1.5 * limit:
                    assert await page_status(client, cookie) == "page"
                    await asyncio.sleep(0.2)
                await asyncio.sleep(limit + 0.5)  # the idle time passing is what is tested
                assert await page_status(client, cookie) == "login"
            assert await api_status(client, cookie) == 401
    finally:
        assert process.stop(), process.output()


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


def test_the_sessions_kept_are_bounded_the_oldest_evicted() -> None:
    """A flood of logins cannot grow the console's memory: past the limit, the oldest go."""
    sessions = Sessions(b"k" * 32, lifetime=3_600, idle=3_600, limit=3)
    opened = [sessions.open() for _ in range(5)]
    assert len(sessions) == 3
    assert [sessions.check(sid) for sid in opened] == [False, False, True, True, True]
    sessions.close(opened[3])
    assert len(sessions) == 2 and not sessions.check(opened[3])
    assert not Sessions(b"j" * 32, lifetime=3_600, idle=3_600).check(opened[4])  # another key


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
@pytest.mark.parametrize(
    "var", ["ALERTBRIDGE_CONSOLE_SESSION_HOURS", "ALERTBRIDGE_CONSOLE_SESSION_IDLE_MINUTES"]
)
def test_a_session_limit_that_is_no_time_stops_the_console(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{var}='{value}' is invalid"):
        load(ConsoleSettings, {var: value})
    assert load(ConsoleSettings, {}).console_session_hours == 12


@pytest.mark.parametrize(
    "target",
    [
        "/static/x%00.css",
        "/static/%00",
        "/static/console.css%00",
        "/static/console.css%00.js",
        "/static/..%2f..%2fetc/passwd",
        "/static/..%2F..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/%2e%2e/app.py",
        "/static/%2e%2e%2fapp.py",
        "/static/../app.py",
        "/static/../../../../../../../etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/console.css/x",
        "/static/" + "a" * 300,
    ],
)
async def test_odd_static_paths_are_404_and_serve_nothing_from_elsewhere(
    console: ConsoleProcess, target: str
) -> None:
    status, body = await raw_get(console.port, target)
    assert status in (400, 404), (status, body[-300:])
    assert b"root:" not in body and b"def create_app" not in body  # /etc/passwd, console/app.py
    assert (await raw_get(console.port, "/static/console.css"))[0] == 200
    output = console.output()
    assert "Traceback" not in output and '"ERROR"' not in output, output[-2_000:]


# --- the live feed ends with the session that opened it ---------------------------------

ENDS_WITHIN = 5.0  # seconds: one poll (console.feed.POLL) and the slack of a busy machine
Lines = AsyncIterator[str]


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


def _project(console: ConsoleProcess, alert_id: str) -> None:
    """An event in the console's read models, as the projector records it."""
    event = _expired(alert_id)
    row = (event.account, event.alert_id, event.replay, EVENT_KINDS[Expired], micros(event.at),
           event_encoder.encode(event))  # fmt: skip
    with contextlib.closing(sqlite3.connect(console.root / "projections.db")) as db, db:
        db.execute(
            "INSERT INTO events (account, alert_id, replay, kind, at, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            row,
        )


async def test_a_live_feed_ends_when_its_session_logs_out(
    console: ConsoleProcess, http: httpx.AsyncClient
) -> None:
    """Another browser logs the session out: its open feed ends; another session's goes on."""
    victim, other = Visitor(http), Visitor(http)
    cookie, kept = await victim.log_in(TOKEN), await other.log_in(TOKEN)
    async with (
        _feed(http, {"Cookie": f"{COOKIE}={cookie}"}) as lines,
        _feed(http, {"Cookie": f"{COOKIE}={kept}"}) as others,
    ):
        assert (await victim.log_out()).status_code == 303  # the form, in another request
        left = time.monotonic()
        await asyncio.wait_for(_drain(lines), ENDS_WITHIN)
        assert time.monotonic() - left < ENDS_WITHIN
        _project(console, "after-the-logout")
        item = await asyncio.wait_for(_next_item(others), ENDS_WITHIN)
        assert (item.kind, item.alert_id) == ("expired", "after-the-logout")
    assert await api_status(http, cookie) == 401 and await api_status(http, kept) == 200


async def test_a_live_feed_keeps_its_session_from_idling_and_ends_at_its_lifetime(
    secured: Secured, tmp_path: Path
) -> None:
    """A person watching the live page is not idle; the lifetime ends the feed anyway."""
    lifetime, idle = 8.0, 2.0  # seconds
    process = ConsoleProcess(
        secured, tmp_path, TOKEN,
        ALERTBRIDGE_CONSOLE_SESSION_HOURS=str(lifetime / 3_600),
        ALERTBRIDGE_CONSOLE_SESSION_IDLE_MINUTES=str(idle / 60),
    ).start()  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=10) as client:
            cookie = await Visitor(client).log_in(TOKEN)
            born = time.monotonic()
            async with _feed(client, {"Cookie": f"{COOKIE}={cookie}"}) as lines:
                ended = asyncio.create_task(_drain(lines))
                # No request but the open feed for longer than the idle time: what is tested.
                await asyncio.sleep(2.5 * idle)
                assert not ended.done(), "the feed ended while it was watched"
                assert await page_status(client, cookie) == "page"  # its first request since
                await asyncio.wait_for(ended, born + lifetime + ENDS_WITHIN - time.monotonic())
                assert time.monotonic() - born >= lifetime
            assert await page_status(client, cookie) == "login"
            assert await api_status(client, cookie) == 401
    finally:
        assert process.stop(), process.output()


async def test_a_live_feed_opened_with_the_token_goes_on(
    console: ConsoleProcess, http: httpx.AsyncClient
) -> None:
    """The token does not end, so neither does its feed: sessions ending around it, and
    several polls, leave it streaming."""
    async with _feed(http, {"Authorization": f"Bearer {TOKEN}"}) as lines:
        for _ in range(3):
            visitor = Visitor(http)
            await visitor.log_in(TOKEN)
            assert (await visitor.log_out()).status_code == 303
        _project(console, "for-the-token")
        item = await asyncio.wait_for(_next_item(lines), ENDS_WITHIN)
        assert (item.kind, item.alert_id) == ("expired", "for-the-token")


async def test_a_listener_that_fell_behind_gets_the_end_of_its_stream() -> None:
    """Dropped with its queue full, it still ends (its browser reconnects): no hang."""
    feed = Feed(lambda: contextlib.closing(sqlite3.connect(":memory:")))  # never polled here
    item = FeedItem(kind="x", account="a", alert_id=None, symbol=None, at=datetime.now(UTC),
                    detail="")  # fmt: skip
    async with feed.listening() as queue:
        for _ in range(QUEUE + 1):
            feed.publish(item)
        got = 0
        while await asyncio.wait_for(queue.get(), 1) is not None:
            got += 1
    assert got == QUEUE
