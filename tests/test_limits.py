"""Risk limits: the trading-hours window and the ledger as pure functions, the accounts
file's validation (`alertbridge config check`), and the limits with real worker
processes sharing one ledger on the real secured server."""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.messages import Executed, Rejected
from contracts.risk import Ledger, Slot
from ops.platform.limits import Limits, TradingHours
from tests.risk_support import (
    ALERTBRIDGE,
    broker_and_fleet,
    finished,
    ops_fixture,  # noqa: F401 (the `ops` fixture)
    send,
)
from tests.secured import Secured
from worker import ledger
from worker.ledger import Ask

NY = "mon-fri 09:30-16:00 America/New_York"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- the trading-hours window -----------------------------------------------------


@pytest.mark.parametrize(
    ("when", "open_"),
    [
        ("2026-12-07T09:30:00-05:00", True),  # Monday, the first minute
        ("2026-12-07T09:29:59-05:00", False),
        ("2026-12-07T15:59:59-05:00", True),
        ("2026-12-07T16:00:00-05:00", False),  # the end is outside
        ("2026-12-05T12:00:00-05:00", False),  # Saturday
        ("2026-12-07T14:30:00+00:00", True),  # 09:30 in New York, given in UTC
        ("2026-07-06T13:30:00+00:00", True),  # summer time: 09:30 EDT
        ("2026-07-06T13:29:00+00:00", False),
    ],
)
def test_the_window_is_read_in_its_own_time_zone(when: str, open_: bool) -> None:
    assert TradingHours.parse(NY).is_open(at(when)) is open_


@pytest.mark.parametrize(
    ("when", "open_"),
    [
        ("2026-12-06T18:00:00+00:00", True),  # Sunday evening: the session starts
        ("2026-12-07T16:59:00+00:00", True),  # Monday morning, the same session
        ("2026-12-07T17:30:00+00:00", False),  # the daily break
        ("2026-12-11T17:00:00+00:00", False),  # Friday: Thursday's session ended
        ("2026-12-11T18:00:00+00:00", False),  # Friday evening: no session starts
    ],
)
def test_a_window_across_midnight_belongs_to_the_day_it_starts(when: str, open_: bool) -> None:
    assert TradingHours.parse("sun-thu 18:00-17:00 UTC").is_open(at(when)) is open_


def test_weekday_lists_and_wrapping_ranges() -> None:
    assert TradingHours.parse("mon,wed,fri 00:00-23:59 UTC").days == {0, 2, 4}
    assert TradingHours.parse("fri-mon 00:00-23:59 UTC").days == {4, 5, 6, 0}
    assert TradingHours.parse("SAT 00:00-23:59 UTC").days == {5}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("mon-fri", "write it as 'mon-fri 09:30-16:00 America/New_York'"),
        ("mon-fri 09:30-16:00 America/New_Yrok", "unknown time zone 'America/New_Yrok'"),
        ("mon-fri 09:30-16:00 ../../etc/passwd", "unknown time zone"),
        ("mon-fri 9:30-16:00 UTC", "'9:30' is not a time as HH:MM"),
        ("mon-fri 09:30-24:00 UTC", "'24:00' is not a time as HH:MM"),
        ("mon-fry 09:30-16:00 UTC", "'fry' is not a weekday"),
        ("mon 10:00-10:00 UTC", "the window is empty"),
    ],
)
def test_a_bad_window_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=None) as raised:
        TradingHours.parse(text)
    assert says in str(raised.value)


def test_the_trading_day_is_the_windows_date() -> None:
    late = at("2026-12-08T03:00:00+00:00")  # still Monday in New York
    assert Limits(trading_hours=NY).trading_day(late) == "2026-12-07"
    assert Limits().trading_day(late) == "2026-12-08"


# --- the ledger, pure ---------------------------------------------------------------

NOW = at("2026-12-07T15:00:00+00:00").timestamp()


def ask(key: str, *, symbol: str = "AAPL", delta: float = 1.0, notional: float = 100.0,
        when: float = NOW, day: str = "2026-12-07") -> Ask:  # fmt: skip
    return Ask(key=key, symbol=symbol, notional=notional, delta=delta, at=when, day=day)


def book(*asks: Ask) -> Ledger:
    found = Ledger()
    for a in asks:
        found = ledger.reserve(found, a)
    return found


def test_orders_per_minute_counts_a_sliding_minute() -> None:
    limits = Limits(orders_per_minute=2)
    full = book(ask("a", when=NOW - 59), ask("b", when=NOW - 30))
    assert ledger.refusal(limits, full, ask("c")) == "over orders_per_minute 2"
    older = book(ask("a", when=NOW - 61), ask("b", when=NOW - 30))
    assert ledger.refusal(limits, older, ask("c")) is None


def test_orders_per_day_counts_the_trading_day_only() -> None:
    limits = Limits(orders_per_day=2)
    today = book(ask("a", when=NOW - 3600), ask("b", when=NOW - 7200))
    assert ledger.refusal(limits, today, ask("c")) == "over orders_per_day 2"
    yesterday = book(ask("a", day="2026-12-06", when=NOW - 90_000), ask("b", when=NOW - 10))
    assert ledger.refusal(limits, yesterday, ask("c")) is None


def test_daily_notional_sums_today_and_names_the_amounts() -> None:
    limits = Limits(max_daily_notional=1000)
    spent = book(ask("a", notional=600))
    assert ledger.refusal(limits, spent, ask("b", notional=400)) is None
    assert ledger.refusal(limits, spent, ask("b", notional=401)) == (
        "over max_daily_notional 1000 (today 600, this order 401)"
    )


def test_max_position_counts_orders_in_flight_and_lets_a_reduction_through() -> None:
    limits = Limits(max_position=3)
    held = msgspec.structs.replace(book(ask("a", delta=1)), positions={"AAPL": 2.0})
    assert ledger.position(held, "AAPL") == 3.0  # two filled, one in flight
    assert ledger.refusal(limits, held, ask("b", delta=1)) == (
        "over max_position 3 for AAPL (would be 4)"
    )
    assert ledger.refusal(limits, held, ask("b", delta=-1)) is None
    assert ledger.refusal(limits, held, ask("b", symbol="MSFT", delta=3)) is None
    over = msgspec.structs.replace(Ledger(), positions={"AAPL": 5.0})  # from before the limit
    assert ledger.refusal(limits, over, ask("b", delta=-1)) is None


def test_commit_fills_the_position_once_and_breaks_the_streak() -> None:
    reserved = msgspec.structs.replace(book(ask("a", delta=2)), streak=("x",))
    done = ledger.commit(reserved, ask("a", delta=2), close=False)
    assert done is not None
    assert done.positions == {"AAPL": 2.0} and done.slots["a"].done and done.streak == ()
    assert ledger.commit(done, ask("a", delta=2), close=False) is None  # a redelivery
    closed = ledger.commit(done, ask("z", delta=-2), close=True)
    assert closed is not None and closed.positions == {"AAPL": 0.0}
    unseen = ledger.commit(Ledger(), ask("n", delta=1), close=False)  # reserved nowhere
    assert unseen is not None and unseen.slots["n"].done and unseen.positions == {"AAPL": 1.0}


def test_release_gives_the_slot_back() -> None:
    reserved = book(ask("a"), ask("b"))
    released = ledger.release(reserved, "a")
    assert released is not None and set(released.slots) == {"b"}
    assert ledger.release(released, "a") is None


def test_the_streak_trips_once_at_n_and_a_redelivery_trips_it_again() -> None:
    first, trip = ledger.rejected(Ledger(), "a", 2)
    assert first is not None and first.streak == ("a",) and trip == ()
    assert ledger.rejected(first, "a", 2) == (None, ())  # counted once
    second, trip = ledger.rejected(first, "b", 2)
    assert second is not None and trip == ("a", "b")
    assert second.streak == () and second.tripped == ("a", "b")  # a fresh streak starts
    assert ledger.rejected(second, "b", 2) == (None, ("a", "b"))  # idempotent re-trip


def test_prune_keeps_what_a_limit_reads() -> None:
    slots = {
        "today": Slot(symbol="A", at=NOW - 7200, day="2026-12-07", done=True),
        "last-minute": Slot(symbol="A", at=NOW - 30, day="2026-12-06", done=True),
        "old": Slot(symbol="A", at=NOW - 7200, day="2026-12-06", done=True),
        "in-flight": Slot(symbol="A", at=NOW - 80_000, day="2026-12-06"),
        "given-up": Slot(symbol="A", at=NOW - 90_000, day="2026-12-06"),
    }
    kept = ledger.prune(Ledger(slots=slots), NOW, "2026-12-07")
    assert set(kept.slots) == {"today", "last-minute", "in-flight"}


def test_the_alert_key_is_per_account_alert_and_replay_round() -> None:
    from tests.workers import make_alert

    a = make_alert("x")
    assert ledger.alert_key(a) == ledger.alert_key(make_alert("x"))
    assert ledger.alert_key(a) != ledger.alert_key(msgspec.structs.replace(a, replay=1))
    assert ledger.alert_key(a) != ledger.alert_key(msgspec.structs.replace(a, account="b"))


# --- the accounts file: `alertbridge config check` -----------------------------------


def config_check(tmp_path: Path, limits: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "alertbridge.toml"
    path.write_text(f'[accounts.main]\nbroker = "paper"\n[accounts.main.limits]\n{limits}\n')
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALERTBRIDGE_")}
    return subprocess.run(
        [ALERTBRIDGE, "config", "check"], env={**clean, "ALERTBRIDGE_CONFIG": str(path)},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_config_check_shows_the_limits(tmp_path: Path) -> None:
    done = config_check(
        tmp_path, f'orders_per_minute = 5\nmax_position = 2.5\ntrading_hours = "{NY}"'
    )
    assert done.returncode == 0, done.stderr
    assert f"limits: orders_per_minute 5, max_position 2.5, trading_hours {NY}" in done.stdout


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        ('trading_hours = "mon-fri 09:30-16:00 Mars/Olympus"', "unknown time zone 'Mars/Olympus'"),
        ('trading_hours = "weekdays"', "write it as 'mon-fri 09:30-16:00 America/New_York'"),
        ("orders_per_minute = 0", "Expected `int` >= 1 (key 'limits.orders_per_minute')"),
        ("max_daily_notional = -5", "Expected `float` > 0.0 (key 'limits.max_daily_notional')"),
        ("halt_after_rejections = 2.5", "Expected `int | null`, got `float`"),
        ("orders_per_hour = 5", "unknown field `orders_per_hour`"),
    ],
)
def test_config_check_refuses_bad_limits_naming_the_account_and_key(
    tmp_path: Path, limits: str, says: str
) -> None:
    done = config_check(tmp_path, limits)
    assert done.returncode == 2
    assert "account 'main'" in done.stderr and says in done.stderr, done.stderr


# --- real workers sharing one ledger ------------------------------------------------

LIMITS = {"orders_per_minute": "3", "max_position": "5"}


async def test_several_workers_never_pass_a_limit_together_and_it_survives_restarts(
    secured: Secured, ops: JetStreamContext, as_ingress: Client, tmp_path: Path
) -> None:
    """Twelve alerts of seven symbols at once over three workers: exactly three placed.
    Then every worker is killed and restarted, and the minute is still full."""
    ingress = secured.js("ingress", as_ingress)
    async with broker_and_fleet(secured, tmp_path, 3, LIMITS) as (broker, fleet):
        burst = set(await asyncio.gather(*(send(ingress, t, "capped") for t in range(1, 13))))
        outcome = await finished(ops, burst)
        executed = [e for e in outcome.values() if isinstance(e, Executed)]
        refused = [e for e in outcome.values() if isinstance(e, Rejected)]
        assert len(executed) == 3 and len(broker.placed_tags()) == 3
        assert {e.reason for e in refused} == {"over orders_per_minute 3"}
        other = await send(ingress, 50)  # the default account has no limits
        assert isinstance((await finished(ops, {other}))[other], Executed)

        for slot in range(3):
            fleet.kill(slot)  # kill -9, restarted
        await fleet.settled()
        late = await send(ingress, 60, "capped")
        event = (await finished(ops, {late}))[late]
        assert isinstance(event, Rejected) and event.reason == "over orders_per_minute 3"
    assert len(broker.placed_tags()) == 4


async def test_the_window_refuses_outside_its_hours_with_real_workers(
    secured: Secured, ops: JetStreamContext, as_ingress: Client, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    closed = (now.hour + 12) % 24  # a one-hour window half a day away
    window = f"mon-sun {closed:02d}:00-{closed:02d}:59 UTC"
    ingress = secured.js("ingress", as_ingress)
    async with broker_and_fleet(secured, tmp_path, 1, {"trading_hours": f'"{window}"'}) as (
        broker,
        _,
    ):
        alert_id = await send(ingress, 1, "capped")
        event = (await finished(ops, {alert_id}))[alert_id]
    assert isinstance(event, Rejected)
    assert event.reason == f"outside trading_hours {window}"
    assert broker.placed_tags() == set()
