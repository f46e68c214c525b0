"""The paper broker: an embedded SQLite book that behaves like a real broker.

Client order ids are UNIQUE, so a redelivered alert can never create a second
order: the second insert fails and the caller is told `DuplicateOrderError`,
just as Alpaca or Binance answer. Fills are simulated at the alert's price when
it has one (limit orders at their limit). `close` flattens the paper position.
Several worker processes may share the file (WAL, busy timeout).

Orders are written by group commit: the calls made in one turn of the event loop are
written together, in one transaction, right after it (a loop callback, not a task or
a thread: a thread hop per order cost a sixth of the worker's CPU, docs/performance.md);
each call still gets its own result or its own error. The write never waits for a
lock in the event loop: when another process holds the book, the batch and every
call after it go to a thread that waits for the lock (busy timeout), until the queue
is empty again. What is left blocking the loop is one uncontended SQLite transaction per
loop turn (WAL, synchronous=NORMAL: no fsync per commit). The WAL checkpoints, which
fsync (what that costs: docs/performance.md), run in a thread every `CHECKPOINT_EVERY`
commits instead of inside whichever commit crosses SQLite's threshold: a passive one,
which never stops a writer, and once the WAL is over `WAL_RESTART_FRAMES` (writes that
never pause keep a passive checkpoint from ever letting the WAL start over) a restarting
one, during which the loop's writes find the book busy and go to the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import random
import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from ops.platform.files import private_dir
from worker.brokers.base import Order, OrderResult
from worker.errors import DuplicateOrderError, OrderRejectedError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from contracts.messages import Side

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_order_id TEXT NOT NULL UNIQUE,
    broker_order_id TEXT NOT NULL,
    account TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    quantity REAL NOT NULL,
    order_type TEXT NOT NULL,
    limit_price REAL, stop_price REAL, take_profit REAL, stop_loss REAL,
    fill_price REAL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""

# A queued call: what to run in the batch, on which order, and who waits for it.
_Call = tuple["Callable[[sqlite3.Connection, Order], object]", Order, "asyncio.Future[Any]"]

_COLUMNS: Final = "client_order_id, broker_order_id, status, side, quantity, fill_price"

log = logging.getLogger(__name__)

# Commits in the event loop between two WAL checkpoints (each in a thread), and the
# WAL size (in pages) past which a checkpoint also makes the WAL start over.
CHECKPOINT_EVERY: Final = 200
WAL_RESTART_FRAMES: Final = 2000
CHECKPOINT_WAIT: Final = 0.05  # seconds a restarting checkpoint waits for others


class PaperBroker:
    """A SQLite-backed paper book."""

    name = "paper"
    can_lookup = True

    def __init__(self, path: Path, equity: float = 100_000.0) -> None:
        self._equity = equity
        _private_files(path)
        # Two connections to the one file: the loop's never waits for a lock
        # (busy timeout 0), the thread's waits up to 30 s for another process.
        self._waiting_db = _connect(path, timeout=30)
        self._waiting_db.executescript(SCHEMA)
        self._db = _connect(path, timeout=0)
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints: see _checkpoint
        # A restarting checkpoint holds writers off while it waits: only briefly (a
        # reader that keeps a transaction open must not stop every write for long).
        self._checkpoint_db = _connect(path, timeout=CHECKPOINT_WAIT)
        self._commits = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self._queue: list[_Call] = []
        self._scheduled = False
        self._waiter: asyncio.Task[None] | None = None

    async def place(self, order: Order) -> OrderResult:
        """Insert the order; a known client order id raises DuplicateOrderError."""
        result: OrderResult = await self._submit(self._place, order)
        return result

    async def lookup(self, order: Order) -> OrderResult | None:
        """The order with this order's client order id (unique across the whole book)."""
        found: OrderResult | None = await self._submit(self._lookup_order, order)
        return found

    def _submit(
        self, fn: Callable[[sqlite3.Connection, Order], object], order: Order
    ) -> asyncio.Future[Any]:
        """Queue a call for the next batch; the batch is written after this loop turn."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((fn, order, future))
        if not self._scheduled and self._waiter is None:
            self._scheduled = True
            # In a context of its own: the batch belongs to no one alert's trace.
            loop.call_soon(self._write_now, context=contextvars.Context())
        return future

    def _take(self) -> list[_Call]:
        # A caller that gave up (its timeout) is not written: it will be retried,
        # and looked up first, like any broker call that timed out.
        batch = [call for call in self._queue if not call[2].done()]
        self._queue = []
        return batch

    def _write_now(self) -> None:
        """Write the queued calls in this thread, unless another process holds the book."""
        self._scheduled = False
        if self._waiter is not None:  # a thread is waiting for the lock: queue behind it
            return
        batch = self._take()
        if not batch:
            return
        try:
            outcomes = self._run(self._db, batch)
        except Exception as exc:  # noqa: BLE001 - not the orders' fault: each on its own
            if _busy(exc):  # another process holds the book: wait for it off the loop
                self._queue[:0] = batch
                self._waiter = asyncio.get_running_loop().create_task(
                    self._write_waiting(), context=contextvars.Context()
                )
                return
            outcomes = [self._alone(self._db, call) for call in batch]
        _settle(batch, outcomes)
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and self._checkpointing is None:
            self._commits = 0
            self._checkpointing = asyncio.get_running_loop().create_task(
                self._checkpoint(), context=contextvars.Context()
            )

    async def _checkpoint(self) -> None:
        """Copy the WAL into the book in a thread, without waiting for other writers."""
        try:
            _, frames, copied = await asyncio.to_thread(self._wal_checkpoint, "PASSIVE")
            # Restart only a WAL that is all copied: else a reader holds part of it, and
            # a restart would only hold the writers off until it gives up.
            if frames > WAL_RESTART_FRAMES and copied == frames:
                await asyncio.to_thread(self._wal_checkpoint, "RESTART")
        except sqlite3.Error as exc:  # the next one catches up
            log.warning("paper book checkpoint failed: %r", exc)
        finally:
            self._checkpointing = None

    def _wal_checkpoint(self, mode: str) -> tuple[int, int, int]:
        """(busy, frames in the WAL, frames checkpointed), as SQLite reports them."""
        row = self._checkpoint_db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    async def _write_waiting(self) -> None:
        """Write batches in a thread that waits for the lock, until the queue is empty."""
        try:
            while batch := self._take():
                db = self._waiting_db
                try:
                    outcomes = await asyncio.to_thread(self._run, db, batch)
                except Exception:  # noqa: BLE001 - not the orders' fault: each on its own
                    outcomes = [
                        await asyncio.to_thread(self._alone, db, call)
                        if not call[2].done()
                        else None  # gave up meanwhile: not written
                        for call in batch
                    ]
                _settle(batch, outcomes)
        finally:
            self._waiter = None

    def _alone(self, db: sqlite3.Connection, call: _Call) -> object:
        """One call in a transaction of its own: its own error, if any, is its outcome."""
        try:
            return self._run(db, [call])[0]
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            return exc

    def _run(self, db: sqlite3.Connection, batch: list[_Call]) -> list[object]:
        """One transaction for the batch; a call's own error fails only that call."""
        outcomes: list[object] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for fn, order, _ in batch:
                try:
                    outcomes.append(fn(db, order))
                except (DuplicateOrderError, OrderRejectedError) as exc:
                    outcomes.append(exc)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return outcomes

    async def equity(self) -> float:
        """The paper account's (fixed) equity, for percent-of-equity sizing."""
        return self._equity

    async def close(self) -> None:
        """Finish the batch being written, then close the file."""
        while self._scheduled or self._waiter is not None or self._checkpointing is not None:
            running = [t for t in (self._waiter, self._checkpointing) if t is not None]
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            else:
                await asyncio.sleep(0)
        self._db.close()
        self._waiting_db.close()
        self._checkpoint_db.close()  # the last one closed checkpoints what is left

    def _place(self, db: sqlite3.Connection, order: Order) -> OrderResult:
        """Insert one order (inside the batch's transaction)."""
        side, quantity = order.side, order.quantity
        if side == "close":
            # A close placed before has flattened the position: it must read as the
            # duplicate it is, not as "nothing to close".
            if self._lookup(db, order.client_order_id) is not None:
                raise DuplicateOrderError(order.client_order_id)
            side, quantity = self._closing(db, order.account, order.symbol)
        fill = order.limit_price if order.order_type == "limit" else order.reference_price
        status = "filled" if fill is not None or order.order_type == "market" else "accepted"
        # Unique, not secret: no `os.urandom` call per order (secrets.token_hex's cost).
        broker_order_id = f"{random.getrandbits(128):032x}"
        try:
            self._insert(db, order, broker_order_id, side, quantity, fill, status)
        except sqlite3.IntegrityError as exc:  # the UNIQUE client order id
            if getattr(exc, "sqlite_errorcode", 0) != sqlite3.SQLITE_CONSTRAINT_UNIQUE:
                raise
            raise DuplicateOrderError(order.client_order_id) from None
        return OrderResult(
            client_order_id=order.client_order_id,
            broker_order_id=broker_order_id,
            status=status,
            side=side,
            quantity=quantity,
            fill_price=fill,
        )

    @staticmethod
    def _insert(
        db: sqlite3.Connection,
        order: Order,
        broker_order_id: str,
        side: str,
        quantity: float,
        fill: float | None,
        status: str,
    ) -> None:
        db.execute(
            "INSERT INTO orders (client_order_id, broker_order_id, account, symbol, side,"
            " quantity, order_type, limit_price, stop_price, take_profit, stop_loss,"
            " fill_price, status, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                order.client_order_id, broker_order_id, order.account, order.symbol, side,
                quantity, order.order_type, order.limit_price, order.stop_price,
                order.take_profit, order.stop_loss, fill, status,
                datetime.now(UTC).isoformat(),
            ),
        )  # fmt: skip

    def _lookup_order(self, db: sqlite3.Connection, order: Order) -> OrderResult | None:
        return self._lookup(db, order.client_order_id)

    def _closing(self, db: sqlite3.Connection, account: str, symbol: str) -> tuple[Side, float]:
        row = db.execute(
            "SELECT COALESCE(SUM(CASE side WHEN 'buy' THEN quantity ELSE -quantity END), 0)"
            " FROM orders WHERE account = ? AND symbol = ? AND status = 'filled'",
            (account, symbol),
        ).fetchone()
        position = float(row[0])
        if abs(position) < 1e-12:
            raise OrderRejectedError(f"no open paper position in {symbol} to close")
        return ("sell" if position > 0 else "buy"), abs(position)

    def _lookup(self, db: sqlite3.Connection, client_order_id: str) -> OrderResult | None:
        row = db.execute(
            f"SELECT {_COLUMNS} FROM orders WHERE client_order_id = ?",  # noqa: S608 - constant columns
            (client_order_id,),
        ).fetchone()
        if row is None:
            return None
        return OrderResult(
            client_order_id=row[0],
            broker_order_id=row[1],
            status=row[2],
            side=row[3],
            quantity=row[4],
            fill_price=row[5],
        )


def _private_files(path: Path) -> None:
    """The book and its -wal and -shm files readable by their owner only (0600).

    The book is created 0600 before SQLite opens it: SQLite gives a new -wal or -shm
    file the book's own mode. Files an earlier version left 0644 are tightened; a
    missing folder is made 0700 (an existing one is left as it is).
    """
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # SQLite takes an empty file as new
    os.close(fd)
    for file in (path, *(path.with_name(path.name + end) for end in ("-wal", "-shm"))):
        with contextlib.suppress(FileNotFoundError):  # -wal and -shm come and go
            info = file.stat()
            if info.st_mode & 0o077 and info.st_uid == os.getuid():
                file.chmod(0o600)


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _busy(exc: Exception) -> bool:
    """Another connection holds the lock (SQLITE_BUSY or SQLITE_LOCKED)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _settle(batch: list[_Call], outcomes: list[object]) -> None:
    """Hand each caller its outcome (unless it gave up meanwhile)."""
    for (_, _, future), outcome in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
