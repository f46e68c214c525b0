"""The paper broker on a real SQLite file, and `worker.execute` against it."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from contracts.messages import Alert
from ops.platform.accounts import Account
from tests.workers import make_order
from worker.accounts import size
from worker.brokers.base import OrderResult
from worker.brokers.paper import CHECKPOINT_EVERY, WAL_RESTART_FRAMES, PaperBroker
from worker.errors import DuplicateOrderError, OrderRejectedError, TerminalError
from worker.execute import client_order_id, execute, to_order

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

RECEIVED = datetime(2025, 1, 15, 14, 30, 2, tzinfo=UTC)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "book" / "paper.db"


@pytest.fixture
async def broker(db_path: Path) -> AsyncIterator[PaperBroker]:
    book = PaperBroker(db_path)
    yield book
    await book.close()


def _alert(**fields: Any) -> Alert:
    values: dict[str, Any] = {
        "id": "alert-1",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": 5.0,
        "price": 190.25,
        "received_at": RECEIVED,
    }
    values.update(fields)
    return Alert(**values)


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT client_order_id, side, quantity, fill_price, status FROM orders ORDER BY seq"
        ).fetchall()


# --- PaperBroker -----------------------------------------------------------------


async def test_market_order_fills_at_the_reference_price(broker: PaperBroker) -> None:
    result = await broker.place(make_order())
    assert result.client_order_id == "ab-1"
    assert result.status == "filled"
    assert result.side == "buy"
    assert result.quantity == 10.0
    assert result.fill_price == 190.25
    assert result.broker_order_id


async def test_limit_order_fills_at_the_limit_price(broker: PaperBroker, db_path: Path) -> None:
    result = await broker.place(make_order(order_type="limit", limit_price=185.5))
    assert result.status == "filled"
    assert result.fill_price == 185.5
    assert _rows(db_path) == [("ab-1", "buy", 10.0, 185.5, "filled")]


async def test_a_second_place_with_the_same_id_is_a_duplicate(
    broker: PaperBroker, db_path: Path
) -> None:
    first = await broker.place(make_order())
    with pytest.raises(DuplicateOrderError):
        await broker.place(make_order(quantity=99.0, side="sell"))
    assert _rows(db_path) == [("ab-1", "buy", 10.0, 190.25, "filled")]
    # The book still works after the rolled-back duplicate.
    second = await broker.place(make_order("ab-2"))
    assert second.broker_order_id != first.broker_order_id
    assert len(_rows(db_path)) == 2


async def test_lookup_finds_a_placed_order(broker: PaperBroker) -> None:
    placed = await broker.place(make_order(side="sell", quantity=3.0))
    assert await broker.lookup(make_order(side="sell", quantity=3.0)) == placed
    assert await broker.lookup(make_order("ab-unknown")) is None


async def test_close_flattens_a_long_position(broker: PaperBroker, db_path: Path) -> None:
    await broker.place(make_order("ab-1", quantity=10.0))
    await broker.place(make_order("ab-2", quantity=5.0))
    await broker.place(make_order("ab-3", side="sell", quantity=3.0))
    # Another symbol and another account do not count.
    await broker.place(make_order("ab-4", symbol="MSFT", quantity=100.0))
    await broker.place(make_order("ab-5", account="other", quantity=100.0))
    result = await broker.place(make_order("ab-close", side="close", quantity=0.0))
    assert result.side == "sell"
    assert result.quantity == 12.0
    assert result.status == "filled"
    assert await broker.lookup(make_order("ab-close", side="close", quantity=0.0)) == result
    assert _rows(db_path)[-1] == ("ab-close", "sell", 12.0, 190.25, "filled")
    with pytest.raises(OrderRejectedError, match="AAPL"):
        await broker.place(make_order("ab-close-again", side="close", quantity=0.0))
    # The same close redelivered is a duplicate, not "nothing to close".
    with pytest.raises(DuplicateOrderError):
        await broker.place(make_order("ab-close", side="close", quantity=0.0))


async def test_close_flattens_a_short_position(broker: PaperBroker) -> None:
    await broker.place(make_order("ab-1", side="sell", quantity=4.0))
    result = await broker.place(make_order("ab-close", side="close", quantity=0.0))
    assert (result.side, result.quantity) == ("buy", 4.0)


async def test_close_when_flat_is_rejected(broker: PaperBroker, db_path: Path) -> None:
    with pytest.raises(OrderRejectedError):
        await broker.place(make_order("ab-close", side="close", quantity=0.0))
    assert _rows(db_path) == []
    assert await broker.lookup(make_order("ab-close", side="close", quantity=0.0)) is None


async def test_two_brokers_on_one_file_share_uniqueness(db_path: Path) -> None:
    first, second = PaperBroker(db_path), PaperBroker(db_path)
    try:
        placed = await first.place(make_order("ab-shared"))
        with pytest.raises(DuplicateOrderError):
            await second.place(make_order("ab-shared"))
        assert await second.lookup(make_order("ab-shared")) == placed
        other = await second.place(make_order("ab-other"))
        assert await first.lookup(make_order("ab-other")) == other
    finally:
        await first.close()
        await second.close()
    assert [row[0] for row in _rows(db_path)] == ["ab-shared", "ab-other"]


async def test_two_brokers_racing_on_one_id_place_it_once(db_path: Path) -> None:
    first, second = PaperBroker(db_path), PaperBroker(db_path)
    try:
        outcomes = await asyncio.gather(
            *(book.place(make_order("ab-race")) for book in (first, second, first, second)),
            return_exceptions=True,
        )
    finally:
        await first.close()
        await second.close()
    placed = [o for o in outcomes if isinstance(o, OrderResult)]
    duplicates = [o for o in outcomes if isinstance(o, DuplicateOrderError)]
    assert (len(placed), len(duplicates)) == (1, 3), outcomes
    assert len(_rows(db_path)) == 1


async def test_an_unfilled_order_is_no_position(broker: PaperBroker) -> None:
    # A stop order without a price is only accepted, not filled: nothing to close.
    pending = await broker.place(
        make_order("ab-stop", order_type="stop", stop_price=200.0, reference_price=None)
    )
    assert (pending.status, pending.fill_price) == ("accepted", None)
    with pytest.raises(OrderRejectedError):
        await broker.place(make_order("ab-close", side="close", quantity=0.0))


async def test_the_book_survives_a_restart(db_path: Path) -> None:
    book = PaperBroker(db_path)
    placed = await book.place(make_order("ab-1"))
    await book.close()
    reopened = PaperBroker(db_path)
    try:
        assert await reopened.lookup(make_order("ab-1")) == placed
        with pytest.raises(DuplicateOrderError):
            await reopened.place(make_order("ab-1"))
    finally:
        await reopened.close()


async def test_orders_of_one_loop_turn_are_written_together_each_with_its_outcome(
    broker: PaperBroker, db_path: Path
) -> None:
    await broker.place(make_order("ab-known"))
    outcomes = await asyncio.gather(
        broker.place(make_order("ab-a")),
        broker.place(make_order("ab-known")),
        broker.place(make_order("ab-close", side="close", symbol="MSFT", quantity=0.0)),
        broker.place(make_order("ab-b", side="sell", quantity=3.0)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], OrderResult)
    assert isinstance(outcomes[1], DuplicateOrderError)
    assert isinstance(outcomes[2], OrderRejectedError)
    assert isinstance(outcomes[3], OrderResult)
    assert [row[0] for row in _rows(db_path)] == ["ab-known", "ab-a", "ab-b"]


async def test_an_order_the_book_cannot_store_fails_alone(
    broker: PaperBroker, db_path: Path
) -> None:
    unstorable = make_order("ab-bad", quantity=[1.0])  # SQLite cannot bind a list
    outcomes = await asyncio.gather(
        broker.place(make_order("ab-1")),
        broker.place(unstorable),
        broker.place(make_order("ab-2")),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], OrderResult)
    assert isinstance(outcomes[1], sqlite3.Error), outcomes[1]
    assert isinstance(outcomes[2], OrderResult)
    assert [row[0] for row in _rows(db_path)] == ["ab-1", "ab-2"]


async def test_a_call_given_up_before_its_batch_is_not_written(
    broker: PaperBroker, db_path: Path
) -> None:
    gave_up = asyncio.create_task(broker.place(make_order("ab-gave-up")))
    await asyncio.sleep(0)  # queued, not yet written
    gave_up.cancel()
    placed = await broker.place(make_order("ab-kept"))
    assert gave_up.cancelled()
    assert placed.client_order_id == "ab-kept"
    assert [row[0] for row in _rows(db_path)] == ["ab-kept"]


async def test_a_book_another_process_holds_is_waited_for_off_the_event_loop(
    broker: PaperBroker, db_path: Path
) -> None:
    await broker.place(make_order("ab-first"))
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the book
    try:
        waiting = [asyncio.create_task(broker.place(make_order(f"ab-w{i}"))) for i in range(3)]
        started = time.monotonic()
        for _ in range(20):  # the loop keeps turning while the orders wait
            await asyncio.sleep(0.01)
        # A wait for the lock inside the loop would block these 0.2 s of turns for its
        # whole busy timeout (30 s: we hold the lock in this very thread until
        # `finally`); half of that is a bound no load on the machine comes near.
        assert time.monotonic() - started < 15.0
        assert not any(task.done() for task in waiting)
        later = asyncio.create_task(broker.place(make_order("ab-later")))
        await asyncio.sleep(0.05)  # what is tested: time passes, and it is not written
        assert not later.done()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    placed = await asyncio.wait_for(asyncio.gather(*waiting, later), timeout=10)
    assert [p.client_order_id for p in placed] == ["ab-w0", "ab-w1", "ab-w2", "ab-later"]
    assert [row[0] for row in _rows(db_path)] == [
        "ab-first", "ab-w0", "ab-w1", "ab-w2", "ab-later",
    ]  # fmt: skip
    # Once the thread is done, orders are written in the loop again.
    assert (await broker.place(make_order("ab-after"))).client_order_id == "ab-after"


async def test_the_wal_starts_over_while_orders_flow(db_path: Path) -> None:
    """The loop's connection never checkpoints (an fsync in the event loop): a thread
    does, every CHECKPOINT_EVERY commits, and once the WAL is past WAL_RESTART_FRAMES
    makes it start over, though the writes never pause.

    Passive checkpoints alone never let a WAL under steady writes start over: these
    2,000 commits would leave 6,000 frames (25 MB) in it. How big it gets before it
    starts over depends on how long the disk takes to fsync while the writes go on
    (2,600 to 3,200 frames here; 3,700 to 4,900 with the disk and both cores busy;
    3,613 in one CI run), so the test reads the restarts off the WAL header (its
    checkpoint sequence number, which each restart bumps) rather than bounding the
    file's size.
    """
    book = PaperBroker(db_path)
    wal = db_path.with_name(db_path.name + "-wal")
    restarts = 0
    try:
        for i in range(10 * CHECKPOINT_EVERY):  # one commit per loop turn
            await book.place(make_order(f"ab-{i}"))
            if i % 50 == 0:
                await asyncio.sleep(0.001)  # let a checkpoint thread finish now and then
        with wal.open("rb") as header:
            restarts = int.from_bytes(header.read(16)[12:16], "big")
    finally:
        await book.close()
    assert restarts >= 1
    assert len(_rows(db_path)) == 10 * CHECKPOINT_EVERY


async def test_a_reader_holding_the_wal_never_stalls_the_writes(db_path: Path) -> None:
    """An operator's open read transaction keeps the WAL from starting over: the
    checkpoints then leave it be instead of holding every writer off."""
    book = PaperBroker(db_path)
    await book.place(make_order("ab-first"))
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM orders").fetchone()  # a snapshot, held
    slowest = 0.0
    try:
        for i in range(2 * WAL_RESTART_FRAMES // 3 + 2 * CHECKPOINT_EVERY):
            started = time.monotonic()
            await book.place(make_order(f"ab-{i}"))
            slowest = max(slowest, time.monotonic() - started)
            if i % 50 == 0:
                await asyncio.sleep(0.001)  # let the checkpoint threads run
    finally:
        reader.execute("COMMIT")
        reader.close()
        await book.close()
    # A writer held off until a checkpoint gives up on the reader waits its busy timeout:
    # seconds for any wait worth the name (a restart waiting 30 s hangs this test). The
    # 0.05 s CHECKPOINT_WAIT a restart tried against the reader would cost is below what
    # a time bound can tell on a loaded machine, so this bound is for long stalls only.
    assert slowest < 5.0, slowest
    assert len(_rows(db_path)) == 1 + 2 * WAL_RESTART_FRAMES // 3 + 2 * CHECKPOINT_EVERY


# --- worker.execute --------------------------------------------------------------


@pytest.mark.parametrize(
    ("account", "alert_id"),
    [("default", "alert-1"), ("an-account-with-a-long-name", "x" * 128), ("é", "ü/ \x00")],
)
def test_client_order_id_fits_every_broker(account: str, alert_id: str) -> None:
    coid = client_order_id(account, alert_id)
    assert coid == client_order_id(account, alert_id)  # deterministic
    # OKX clOrdId: alphanumeric, at most 32 (Binance allows 36, Alpaca 128).
    assert re.fullmatch(r"ab[0-9a-f]{30}", coid), coid
    assert len(coid) == 32


def test_client_order_id_differs_per_account_and_alert() -> None:
    ids = {
        client_order_id("default", "alert-1"),
        client_order_id("paper-1", "alert-1"),
        client_order_id("default", "alert-2"),
        # The separator keeps ("a", "bc") and ("ab", "c") apart.
        client_order_id("a", "bc"),
        client_order_id("ab", "c"),
    }
    assert len(ids) == 5


async def test_no_quantity_and_no_default_is_terminal(broker: PaperBroker) -> None:
    with pytest.raises(TerminalError, match="quantity"):
        await size(_alert(quantity=None), Account(), broker, None)


async def test_sizing_uses_the_default_quantity(broker: PaperBroker) -> None:
    assert await size(_alert(quantity=None), Account(), broker, 7.0) == 7.0
    assert await size(_alert(quantity=2.0), Account(), broker, 7.0) == 2.0


def test_to_order_carries_the_alert() -> None:
    alert = _alert(
        account="paper-1",
        order_type="limit",
        limit_price=189.4,
        take_profit=195.5,
        stop_loss=185.2,
    )
    order = to_order(alert, Account(), 5.0)
    assert order.client_order_id == client_order_id("paper-1", "alert-1")
    assert (order.account, order.symbol, order.side) == ("paper-1", "AAPL", "buy")
    assert (order.order_type, order.limit_price) == ("limit", 189.4)
    assert (order.take_profit, order.stop_loss) == (195.5, 185.2)
    assert order.reference_price == 190.25


async def test_close_needs_no_quantity(broker: PaperBroker) -> None:
    assert await size(_alert(side="close", quantity=None), Account(), broker, None) == 0.0


async def test_execute_places_then_reports_a_redelivery_as_already_done(
    broker: PaperBroker, db_path: Path
) -> None:
    alert = _alert()
    result, already_done = await execute(alert, Account(), broker, None)
    assert already_done is False
    assert result.client_order_id == client_order_id("default", "alert-1")
    assert result.quantity == 5.0
    again, already_done = await execute(alert, Account(), broker, None)
    assert already_done is True
    assert again == result
    assert len(_rows(db_path)) == 1


async def test_execute_same_alert_id_in_two_accounts_places_two_orders(
    broker: PaperBroker, db_path: Path
) -> None:
    _, first_done = await execute(_alert(account="a1"), Account(), broker, None)
    _, second_done = await execute(_alert(account="a2"), Account(), broker, None)
    assert (first_done, second_done) == (False, False)
    assert len(_rows(db_path)) == 2
