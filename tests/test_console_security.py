"""The console's NATS role, on a real nats-server running deploy/nats-server.conf.

It does its whole job as its own user in its own account (replay a dead letter, halt
and resume, read the queues' state) without one refusal; then every door it must not
have is tried: forging an execution event or a dead letter, tripping a breaker, reading
an event, pulling from a consumer, creating, deleting or purging anything, listening to
alerts, events, dead letters or another role's replies.
Each attempt must fail and leave the streams as they were.

Its static files, as an attacker sees the running `python -m console`: odd paths under
/static (a NUL byte, an encoded `..`, a name too long) are a 404, never a 500 or a
traceback, and never a file from elsewhere; while a real file system error is no 404. A
live feed listener that falls behind is dropped, and its stream still ends. Its login
sessions, and the live feed that ends with one: tests/test_console_sessions.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest
from litestar.file_system import BaseLocalFileSystem
from litestar.testing import AsyncTestClient
from nats.aio.client import Client
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext

from console.app import create_app
from console.feed import QUEUE, Feed, FeedItem
from console.files import StaticFileSystem
from console.settings import ConsoleSettings
from contracts.headers import MSG_ID, DeadLetterHeaders
from contracts.messages import (
    Expired,
    Replayed,
    alert_decoder,
    alert_encoder,
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
from ops.platform.projection_schema import SCHEMA
from ops.platform.settings import DEFAULT_JS_API, ROLE_JS_API, Secret
from tests.console_support import ConsoleProcess, raw_get
from tests.secured import (
    DENIED,
    DENIED_WITHIN,
    Secured,
    Untouched,
    fetch_one,
    publish_alert,
    replay_service,
)
from tests.workers import make_alert

if TYPE_CHECKING:
    from litestar.types.file_types import FileInfo


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
    # A replay: read the entry, then ask the workers' replay service (as the worker role)
    # to store the alert again, record it and remove the entry.
    dlq_seq = await _dead_letter(as_ops, "dead")
    entry = await deadletters.entry(js, dlq_seq)
    assert entry.alert_id == "dead" and entry.reason == "rejected: halted"
    async with replay_service(secured, as_worker):
        done = await deadletters.request_replay(as_console, dlq_seq, 5)
        with pytest.raises(deadletters.NoEntryError):  # gone: it cannot run twice
            await deadletters.request_replay(as_console, dlq_seq, 5)
    assert (done.alert_id, done.replay, done.dlq_seq) == ("dead", 1, dlq_seq)
    stored = await as_ops.get_msg(ALERTS_STREAM, seq=done.stream_seq)
    assert alert_decoder.decode(stored.data or b"").replay == 1
    last = await as_ops.get_last_msg(EVENTS_STREAM, "events.replayed.>")
    recorded = event_decoder.decode(last.data or b"")
    assert isinstance(recorded, Replayed) and recorded.alert_id == "dead"
    assert (await as_ops.stream_info(DLQ_STREAM)).state.messages == 0
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


def _attempts() -> dict[str, Callable[[JetStreamContext], Awaitable[object]]]:
    """What the console must not do."""
    forged = event_encoder.encode(_expired("forged"))
    alert = alert_encoder.encode(make_alert("forged-order"))
    replayed = event_encoder.encode(
        Replayed(alert_id="x", account="a", symbol="X", at=datetime.now(UTC), replay=1,
                 dlq_seq=1, stream_seq=1)
    )  # fmt: skip
    trip = msgspec.json.encode(Halt(account="a", halted=True, at=datetime.now(UTC)))
    return {
        "forge an execution event": lambda js: js.publish(
            event_subject("executed", "a", "X"), forged
        ),
        "forge an expiry": lambda js: js.publish(event_subject("expired", "a", "X"), forged),
        "forge a dead letter": lambda js: js.publish("dlq.alerts.a.X", b"{}"),
        "store an alert of its own": lambda js: js.publish(
            alert_subject("default", "BTCUSDT"), alert, headers={MSG_ID: "alert.default.f"}
        ),
        "record a replay": lambda js: js.publish(event_subject("replayed", "a", "X"), replayed),
        "delete a dead letter": lambda js: js.delete_msg(DLQ_STREAM, 1),
        "read an alert": lambda js: js.get_msg(ALERTS_STREAM, seq=1, direct=True),
        "trip a breaker": lambda js: js.publish(breaker_subject("a"), trip),
        "write a risk ledger": lambda js: js.publish("$KV.LIMITS.ledger.a", b"{}"),
        "read an event": lambda js: js.get_msg(EVENTS_STREAM, seq=1, direct=True),
        "read an event (get)": lambda js: js.get_msg(EVENTS_STREAM, seq=1),
        "read a dead letter (get)": lambda js: js.get_msg(DLQ_STREAM, seq=1),
        "pull a partition": lambda js: fetch_one(js, ALERTS_STREAM, partition_durable(0)),
        "pull the notifier's events": lambda js: fetch_one(js, EVENTS_STREAM, NOTIFIER),
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
    untouched = await Untouched.of(as_ops, names, consumers_of=(EVENTS_STREAM,))
    with pytest.raises(DENIED):
        await asyncio.wait_for(
            _attempts()[attempt](as_console.jetstream(prefix=prefix, timeout=0.5)), 1
        )
    await untouched.check(as_ops)


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


async def test_a_live_feed_listener_that_fell_behind_gets_the_end_of_its_stream() -> None:
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


# --- its HTTP side: the static files --------------------------------------------------

TOKEN = "console-token-for-the-security-tests-0123"


@pytest.fixture(scope="module")
def console(secured: Secured, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProcess]:
    process = ConsoleProcess(secured, tmp_path_factory.mktemp("console"), TOKEN).start()
    yield process
    assert process.stop(), process.output()


# Each is a 404, none a 400: uvicorn passes every one of these targets on as it is, and
# Litestar's router matches each to /static (a `..` it resolves, refusing what leaves the
# folder); the file system then finds no such file.
ODD_PATHS = (
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
    "/static/console.css/x",  # ENOTDIR
    "/static/" + "a" * 300,  # ENAMETOOLONG: one name longer than 255 bytes
    "/static/" + "a" * 256 + "/console.css",  # ENAMETOOLONG, on the way to a name
)


@pytest.mark.parametrize("target", ODD_PATHS)
async def test_odd_static_paths_are_404_and_serve_nothing_from_elsewhere(
    console: ConsoleProcess, target: str
) -> None:
    status, body = await raw_get(console.port, target)
    assert status == 404, (status, body[-300:])
    assert b"root:" not in body and b"def create_app" not in body  # /etc/passwd, console/app.py
    assert (await raw_get(console.port, "/static/console.css"))[0] == 200
    output = console.output()
    assert "Traceback" not in output and '"ERROR"' not in output, output[-2_000:]


def _odd_path(root: Path, kind: str) -> str:
    """A path under `root` that no file can have, by what `stat` says of it."""
    (root / "file").write_text("x")
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    return str(
        {
            "missing": root / "nothing",
            "a NUL byte": root / "x\x00y",
            "a file as a folder": root / "file" / "x",
            "a name too long": root / ("a" * 256),
            "a symlink loop": root / "loop-a",
        }[kind]
    )


@pytest.mark.parametrize(
    "kind", ["missing", "a NUL byte", "a file as a folder", "a name too long", "a symlink loop"]
)
async def test_a_path_no_file_can_have_is_no_file(tmp_path: Path, kind: str) -> None:
    with pytest.raises(FileNotFoundError):
        await StaticFileSystem().info(_odd_path(tmp_path, kind))
    assert (await StaticFileSystem().info(str(tmp_path / "file")))["type"] == "file"


def _failing(code: int) -> Callable[..., Awaitable[FileInfo]]:
    async def info(*_: object, **__: object) -> FileInfo:
        raise OSError(code, os.strerror(code))

    return info


@pytest.mark.parametrize("code", [errno.EIO, errno.EMFILE, errno.EACCES], ids=errno.errorcode.get)
async def test_a_file_system_error_is_not_hidden_as_no_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int
) -> None:
    """The disk, the process's open files, the folder's permissions: the server's
    trouble, not the path's; it must show, not pass for a missing file."""
    monkeypatch.setattr(BaseLocalFileSystem, "info", _failing(code))
    with pytest.raises(OSError) as raised:
        await StaticFileSystem().info(str(tmp_path / "console.css"))
    assert raised.value.errno == code and not isinstance(raised.value, FileNotFoundError)


@pytest.mark.parametrize(
    ("code", "status"), [(errno.EIO, 500), (errno.EACCES, 401)], ids=["EIO", "EACCES"]
)
async def test_what_a_file_system_error_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int, status: int
) -> None:
    """Litestar's answer to what the file system raised: a 500 (EIO), or its 401 for a
    PermissionError; never the 404 of a missing file."""
    db = tmp_path / "projections.db"
    with sqlite3.connect(db) as made:
        made.executescript(SCHEMA)
    app = create_app(ConsoleSettings(projections_db=str(db)), Secret(TOKEN), connect_nats=False)
    async with AsyncTestClient(app, base_url="https://console.test") as client:
        assert (await client.get("/static/console.css")).status_code == 200
        monkeypatch.setattr(BaseLocalFileSystem, "info", _failing(code))
        assert (await client.get("/static/console.css")).status_code == status
