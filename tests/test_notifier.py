"""The notifier, for real: a secured nats-server on deploy/nats-server.conf, events
published as the worker role, the notifier as a process of its own (`python -m
notifier`, killed with SIGKILL and restarted), and Apprise's generic JSON target
(`json://127.0.0.1:<port>/<path>`) posting to an HTTP receiver inside the test.

What is checked is what the receiver got: each message, once, at the right target.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from opentelemetry.metrics import NoOpCounter

from contracts.messages import (
    HALT_EVENT_KINDS,
    DeadLettered,
    Halted,
    Resumed,
    event_encoder,
)
from contracts.risk import EVERY_ACCOUNT
from contracts.subjects import event_subject
from notifier.service import Notifier
from notifier.store import Store
from ops.platform.notify_settings import NotifyConfig, NotifyTargets, Target
from ops.platform.settings import Secret
from tests.notifier_support import (
    CONFIG,
    TOKEN,
    NotifierProcess,
    Publisher,
    Receiver,
    attempt_failed,
    cli,
    executed,
    expired,
    now,
    rejected,
    taken_in,
)
from tests.secured import Secured
from tests.support import eventually
from worker.supervise import LoopWatch, Supervised


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver().start()
    yield found
    found.stop()


@pytest.fixture
def notifier(
    secured: Secured, receiver: Receiver, as_ops: JetStreamContext, tmp_path: Path
) -> Iterator[NotifierProcess]:
    process = NotifierProcess(secured, receiver, tmp_path).start()
    yield process
    process.stop()
    assert TOKEN not in process.logged()  # a URL never reaches a log line


@pytest.fixture
async def events(secured: Secured, as_worker: Client) -> AsyncIterator[Publisher]:
    yield Publisher(secured.js("worker", as_worker))


# --- what is sent, and to whom ----------------------------------------------------------


async def test_dead_letters_rejections_and_expiries_are_sent_with_how_to_replay(
    notifier: NotifierProcess, receiver: Receiver, events: Publisher
) -> None:
    await events(rejected("r-1", dlq_seq=7))
    await events(expired("e-1", last_error="HTTPStatusError: 503"))
    await events(
        DeadLettered(
            alert_id="d-1",
            account="a",
            symbol="NYSE:KO",
            at=now(),
            reason="max_deliveries",
            deliveries=5,
            last_error="ConnectError: refused",
            stream_seq=4,
            dlq_seq=12,
            side="close",
        )
    )
    (rej,) = await receiver.wait_for("everything", "r-1")
    (exp,) = await receiver.wait_for("everything", "e-1")
    (dead,) = await receiver.wait_for("everything", "d-1")
    print("\n--- rejected ---\n" + json.dumps(rej, indent=1))
    print("--- expired ---\n" + json.dumps(exp, indent=1))
    print("--- dead-lettered ---\n" + json.dumps(dead, indent=1))
    for line in ("account a", "symbol: NASDAQ:AAPL", "side: buy", "quantity: 10",
                 "reason: insufficient buying power", "alert id: r-1",
                 "replay: alertbridge dlq replay 7"):  # fmt: skip
        assert line in rej["message"], line
    assert rej["title"] == "alertbridge: rejected: a NASDAQ:AAPL buy"
    assert (
        "75s old, over its max age of 60s; last broker error: HTTPStatusError: 503"
        in (exp["message"])
    )
    assert "quantity: as sized by the account" in exp["message"]
    assert "alertbridge dlq ls (find its DLQ id)" in exp["message"]  # no DLQ id in the event
    assert "reason: max_deliveries; last error: ConnectError: refused" in dead["message"]
    assert "replay: alertbridge dlq replay 12" in dead["message"]
    # Account a's own target gets a's news, not b's.
    await receiver.wait_for("a-only", "d-1")
    assert {m["title"].split(":")[1].strip() for m in receiver.at("a-only")} == {
        "rejected", "dead-lettered",
    }  # fmt: skip


async def test_a_burst_is_folded_into_one_summary_per_interval(
    notifier: NotifierProcess, receiver: Receiver, events: Publisher
) -> None:
    for i in range(6):
        await events(expired(f"burst-{i}"))
    await receiver.wait_for("everything", "burst-0")
    (summary,) = await receiver.wait_for("everything", "5 more alerts expired")
    print("\n--- folded ---\n" + json.dumps(summary, indent=1))
    assert "5 more alerts expired on account b in the last 3 seconds." in summary["message"]
    assert "latest: expired: b BINANCE:BTCUSDT sell" in summary["message"]
    # Nothing else of the burst came: a later message of another kind shows the backlog read.
    await events(rejected("after-the-burst", account="b"))
    await receiver.wait_for("everything", "after-the-burst")
    titles = [m["title"] for m in receiver.at("everything")]
    assert len([t for t in titles if "expired" in t]) == 2, titles
    assert receiver.at("a-only") == []  # none of it was account a's


async def test_a_broker_down_for_long_enough_and_its_recovery(
    notifier: NotifierProcess, receiver: Receiver, events: Publisher
) -> None:
    await events(attempt_failed(now(), "ConnectError: refused", 1))
    (down,) = await receiver.wait_for("everything", "broker down: a")
    await events(attempt_failed(now(), "ReadTimeout", 2))
    await events(executed(now(), 3))
    (up,) = await receiver.wait_for("everything", "broker back: a")
    print("\n--- broker down ---\n" + json.dumps(down, indent=1))
    print("--- broker back ---\n" + json.dumps(up, indent=1))
    assert "unreachable for over 1s" in down["message"]
    assert "last error: ConnectError: refused" in down["message"]
    assert "and 2 failed attempt(s)" in up["message"]
    await receiver.wait_for("a-only", "broker back: a")
    assert len([m for m in receiver.at("everything") if "broker down" in m["title"]]) == 1


async def test_failures_that_end_in_an_order_within_the_threshold_are_no_news(
    secured: Secured, receiver: Receiver, events: Publisher, as_ops: JetStreamContext,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A blip read from a backlog: event times say it lasted 0.2 s, whatever the clock.

    A backlog for sure: stored before the notifier starts. Read live by a notifier that
    had caught up, a pull could end between the two events, and a tick before the next
    would time the failure on the clock (10 s ago, nothing since: down, as far as it knows).
    """
    await events(attempt_failed(now(10), "blip", 1))
    await events(executed(now(9.8), 2))
    await events(rejected("marker"))
    notifier = NotifierProcess(secured, receiver, tmp_path).start()
    try:
        await receiver.wait_for("everything", "marker")
        await taken_in(as_ops)
    finally:
        notifier.stop()
    assert TOKEN not in notifier.logged()
    assert [m for m in receiver.at("everything") if "broker" in m["title"]] == []


async def test_the_dlq_over_its_threshold_is_said_once(
    notifier: NotifierProcess, receiver: Receiver, events: Publisher
) -> None:
    for i in range(3):  # threshold 2
        await events.js.publish("dlq.alerts.a.X", f"dead-{i}".encode())
    (depth,) = await receiver.wait_for("everything", "DLQ depth 3")
    print("\n--- DLQ depth ---\n" + json.dumps(depth, indent=1))
    assert "The DLQ holds 3 entries, over the threshold of 2." in depth["message"]
    await events.js.publish("dlq.alerts.a.X", b"dead-3")
    await events(rejected("marker"))
    await receiver.wait_for("everything", "marker")
    assert [m["title"] for m in receiver.at("everything") if "DLQ" in m["title"]] == [
        "alertbridge: DLQ depth 3"
    ]


async def test_halts_resumes_and_loops(
    notifier: NotifierProcess, receiver: Receiver, events: Publisher
) -> None:
    """As `alertbridge halt` / `resume` and the worker's circuit breaker record them."""
    halts: list[Halted | Resumed] = [
        Halted(account="a", reason="news at 14:00", by="ops", at=now(), halt_id="ops:1"),
        Resumed(account="a", at=now(), halt_id="ops:1"),
        Halted(account=EVERY_ACCOUNT, reason="panic", by="ops", at=now(), halt_id="ops:2"),
        Halted(account="b", reason="5 rejections in a row", by="breaker", at=now(), halt_id="b:1"),
    ]
    for halt in halts:
        kind = HALT_EVENT_KINDS[type(halt)]
        await events.js.publish(
            event_subject(kind, halt.account, "ops"), event_encoder.encode(halt)
        )
    await receiver.wait_for("everything", "trading halted on b: 5 rejections in a row (circuit")
    (halted,) = await receiver.wait_for("a-only", "trading halted on a")
    (resumed,) = await receiver.wait_for("a-only", "trading resumed on a")
    (everywhere,) = await receiver.wait_for("everything", "trading halted on every account")
    print("\n--- halted ---\n" + json.dumps(halted, indent=1))
    print("--- resumed ---\n" + json.dumps(resumed, indent=1))
    assert halted["message"] == "trading halted on a: news at 14:00"
    assert everywhere["message"] == "trading halted on every account: panic"
    assert len(receiver.at("a-only")) == 2  # the system-wide halt goes to global targets only


async def test_a_worker_loop_down_too_long_and_back_is_said(
    notifier: NotifierProcess, receiver: Receiver, as_worker: Client, secured: Secured
) -> None:
    """The worker's LoopWatch, on a real supervised loop that fails, then runs."""
    healthy = asyncio.Event()

    async def start() -> None:
        if not healthy.is_set():
            raise ConnectionError("connection closed")
        await stopping.wait()

    stopping = asyncio.Event()
    loop = Supervised("partition-7", start, NoOpCounter("restarts"))
    js = secured.js("worker", as_worker)
    watch = LoopWatch(lambda subject, data: js.publish(subject, data))
    tasks = [asyncio.create_task(loop.run(stopping)), asyncio.create_task(watch.run(stopping))]
    try:
        (down,) = await receiver.wait_for("everything", "loop down: partition-7")
        healthy.set()
        (up,) = await receiver.wait_for("everything", "loop back: partition-7")
    finally:
        stopping.set()
        await asyncio.gather(*tasks)
    print("\n--- loop down ---\n" + json.dumps(down, indent=1))
    print("--- loop back ---\n" + json.dumps(up, indent=1))
    assert "ConnectionError('connection closed')" in down["message"]
    assert f":{os.getpid()}" in down["message"]


# --- restarts and targets that are down ----------------------------------------------


async def test_kill_9_neither_loses_nor_repeats_a_notification(
    notifier: NotifierProcess, receiver: Receiver, events: Publisher, as_ops: JetStreamContext
) -> None:
    # Taken in and owed, but the target is down: killed, restarted, sent once it is up.
    receiver.stop()
    await events(rejected("owed-1"))
    await events(expired("owed-2"))
    for i in range(3):  # one goes out, two are folded into a summary still to come
        await events(expired(f"fold-{i}", account="a"))
    await taken_in(as_ops)

    async def retrying() -> bool | None:
        return (
            True if "ALERTBRIDGE_NOTIFY_URL did not take a message" in notifier.logged() else None
        )

    await eventually(retrying, within=10)
    notifier.kill()
    receiver.start()
    notifier.start()
    await receiver.wait_for("everything", "owed-1")
    await receiver.wait_for("everything", "owed-2")
    await receiver.wait_for("everything", "fold-0")
    await receiver.wait_for("everything", "2 more alerts expired on account a")

    # Taken is not yet known to be taken: a kill before the store hears so sends the
    # message again (the one gap no sender closes). Wait for the store, then kill.
    async def all_known_sent() -> bool | None:
        logged = notifier.logged()
        targets = ("ALERTBRIDGE_NOTIFY_URL", "ALERTBRIDGE_NOTIFY_A")
        return all(f"sent '2 more alerts expired: a' to {t}" in logged for t in targets) or None

    await eventually(all_known_sent, within=10)
    # Killed again with nothing owed: the next start repeats nothing.
    notifier.kill()
    notifier.start()
    await events(rejected("after-restarts", account="b"))
    await receiver.wait_for("everything", "after-restarts")
    bodies = [m["message"] for m in receiver.at("everything")]
    for text in ("owed-1", "owed-2", "fold-0", "2 more alerts expired on account a"):
        assert len([b for b in bodies if text in b]) == 1, (text, bodies)
    assert len(bodies) == 5


def test_an_event_taken_in_twice_is_said_once(tmp_path: Path) -> None:
    """A notifier killed after its store committed and before its ack reached the server
    gets the event again: the store knows it, and owes nothing more."""
    targets = NotifyTargets(
        config=NotifyConfig(), everywhere=(Target("ALERTBRIDGE_NOTIFY_URL", Secret("x")),),
        accounts={},
    )  # fmt: skip
    store = Store(tmp_path / "n.db")
    data = event_encoder.encode(rejected("twice"))
    for _ in range(2):
        with store.tx():
            Notifier(store, targets).take_in(41, data, now().timestamp())
    assert store.owed() == 1
    store.close()
    reopened = Store(tmp_path / "n.db")  # as after a kill -9: the commit is on disk
    assert reopened.is_done(41) and reopened.owed() == 1


async def test_a_target_that_is_down_only_delays(
    notifier: NotifierProcess, receiver: Receiver, events: Publisher, as_ops: JetStreamContext
) -> None:
    receiver.stop()
    await events(rejected("while-down"))
    await taken_in(as_ops)  # acked: the message is owed in the notifier's store

    async def retried_twice() -> bool | None:
        text = notifier.logged()
        return True if "ALERTBRIDGE_NOTIFY_A did not take a message (try 2)" in text else None

    await eventually(retried_twice, within=15)
    receiver.start()
    await receiver.wait_for("everything", "while-down")
    await receiver.wait_for("a-only", "while-down")
    assert len(receiver.at("everything")) == 1


# --- `alertbridge notify test` and the configuration ---------------------------------


def test_notify_test_sends_one_message_to_each_target(receiver: Receiver, tmp_path: Path) -> None:
    config = tmp_path / "alertbridge.toml"
    config.write_text(CONFIG, encoding="utf-8")
    env = {
        "ALERTBRIDGE_CONFIG": str(config),
        "ALERTBRIDGE_NOTIFY_URL": receiver.url("everything"),
        "ALERTBRIDGE_NOTIFY_A": receiver.url("a-only"),
    }
    done = cli("notify", "test", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ALERTBRIDGE_NOTIFY_URL: sent",
        "ALERTBRIDGE_NOTIFY_A: sent",
    ]
    assert [len(receiver.at(t)) for t in ("everything", "a-only")] == [1, 1]
    print("\n--- notify test ---\n" + json.dumps(receiver.at("everything")[0], indent=1))
    receiver.stop()
    failed = cli("notify", "test", env=env)
    assert failed.returncode == 1
    assert "ALERTBRIDGE_NOTIFY_URL: FAILED" in failed.stdout
    assert TOKEN not in failed.stdout + failed.stderr


UNSET_A = "account 'a': notify_urls_env names ALERTBRIDGE_NOTIFY_A, which is not set"
NOT_A_URL = "[notify] urls_env names ALERTBRIDGE_NOTIFY_URL, which holds no URL Apprise can send to"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ALERTBRIDGE_NOTIFY_A": ""}, UNSET_A),
        ({"ALERTBRIDGE_NOTIFY_URL": f"nonsense://{TOKEN}"}, NOT_A_URL),
    ],
)
def test_a_bad_target_stops_the_notifier_and_fails_the_checks(
    secured: Secured, receiver: Receiver, tmp_path: Path, change: dict[str, str], message: str
) -> None:
    env = {**NotifierProcess(secured, receiver, tmp_path).env, **change}
    start = subprocess.run(
        [sys.executable, "-m", "notifier"], env={**os.environ, **env}, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    for done in (start, cli("config", "check", env=env)):
        assert done.returncode == 2
        assert message in done.stderr
        assert TOKEN not in done.stdout + done.stderr
    assert receiver.got == []


def test_a_bad_notify_table_is_named(tmp_path: Path) -> None:
    config = tmp_path / "alertbridge.toml"
    config.write_text("[notify]\nfold_interval = 0\n[accounts.a]\n", encoding="utf-8")
    done = cli("config", "check", env={"ALERTBRIDGE_CONFIG": str(config)})
    assert done.returncode == 2
    assert "[notify]: Expected `float` > 0.0 (key 'fold_interval')" in done.stderr
    config.write_text("[notify]\nurls = []\n[accounts.a]\n", encoding="utf-8")
    done = cli("config", "check", env={"ALERTBRIDGE_CONFIG": str(config)})
    assert "Object contains unknown field `urls`" in done.stderr
