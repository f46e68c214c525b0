"""The paper broker: an embedded SQLite book that behaves like a real broker.

Client order ids are UNIQUE, so a redelivered alert can never create a second
order: the second insert fails and the caller is told `DuplicateOrderError`,
just as Alpaca or Binance answer. Fills are simulated at the alert's price when
it has one (limit orders at their limit). `close` flattens the paper position.
Several worker processes may share the file (WAL, busy timeout).

Orders are written by group commit: calls queue up while one batch is being written
(in a thread, one transaction), and the next batch takes all of them. One thread hop
and one commit per batch instead of per order is what lets the paper book keep up
with thousands of alerts a second (docs/performance.md); each call still gets its own
result or its own error.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

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
_Call = tuple["Callable[[Order], object]", Order, "asyncio.Future[Any]"]

_COLUMNS: Final = "client_order_id, broker_order_id, status, side, quantity, fill_price"


class PaperBroker:
    """A SQLite-backed paper book."""

    name = "paper"

    def __init__(self, path: Path, equity: float = 100_000.0) -> None:
        self._equity = equity
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._queue: list[_Call] = []
        self._writer: asyncio.Task[None] | None = None

    async def place(self, order: Order) -> OrderResult:
        """Insert the order; a known client order id raises DuplicateOrderError."""
        result: OrderResult = await self._submit(self._place, order)
        return result

    async def lookup(self, order: Order) -> OrderResult | None:
        """The order with this order's client order id (unique across the whole book)."""
        found: OrderResult | None = await self._submit(self._lookup_order, order)
        return found

    def _submit(self, fn: Callable[[Order], object], order: Order) -> asyncio.Future[Any]:
        """Queue a call for the next batch; start the writer when none runs."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((fn, order, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return future

    async def _write(self) -> None:
        """Write batches until the queue is empty; every call gets its outcome."""
        while self._queue:
            # A caller that gave up (its timeout) is not written: it will be retried,
            # and looked up first, like any broker call that timed out.
            batch = [call for call in self._queue if not call[2].done()]
            self._queue = []
            if not batch:
                continue
            try:
                outcomes = await asyncio.to_thread(self._run, batch)
            except Exception:  # noqa: BLE001 - not the orders' fault: each on its own
                outcomes = [await self._alone(call) for call in batch]
            for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def _alone(self, call: _Call) -> object:
        """One call in a transaction of its own: its own error, if any, is its outcome."""
        try:
            return (await asyncio.to_thread(self._run, [call]))[0]
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            return exc

    def _run(self, batch: list[_Call]) -> list[object]:
        """One transaction for the batch; a call's own error fails only that call."""
        outcomes: list[object] = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for fn, order, _ in batch:
                try:
                    outcomes.append(fn(order))
                except (DuplicateOrderError, OrderRejectedError) as exc:
                    outcomes.append(exc)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return outcomes

    async def equity(self) -> float:
        """The paper account's (fixed) equity, for percent-of-equity sizing."""
        return self._equity

    async def close(self) -> None:
        """Finish the batch being written, then close the file."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        self._db.close()

    def _place(self, order: Order) -> OrderResult:
        """Insert one order (inside the batch's transaction)."""
        side, quantity = order.side, order.quantity
        if self._lookup(order.client_order_id) is not None:
            raise DuplicateOrderError(order.client_order_id)
        if side == "close":
            side, quantity = self._closing(order.account, order.symbol)
        fill = order.limit_price if order.order_type == "limit" else order.reference_price
        status = "filled" if fill is not None or order.order_type == "market" else "accepted"
        broker_order_id = uuid.uuid4().hex
        self._db.execute(
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
        return OrderResult(
            client_order_id=order.client_order_id,
            broker_order_id=broker_order_id,
            status=status,
            side=side,
            quantity=quantity,
            fill_price=fill,
        )

    def _lookup_order(self, order: Order) -> OrderResult | None:
        return self._lookup(order.client_order_id)

    def _closing(self, account: str, symbol: str) -> tuple[Side, float]:
        row = self._db.execute(
            "SELECT COALESCE(SUM(CASE side WHEN 'buy' THEN quantity ELSE -quantity END), 0)"
            " FROM orders WHERE account = ? AND symbol = ? AND status = 'filled'",
            (account, symbol),
        ).fetchone()
        position = float(row[0])
        if abs(position) < 1e-12:
            raise OrderRejectedError(f"no open paper position in {symbol} to close")
        return ("sell" if position > 0 else "buy"), abs(position)

    def _lookup(self, client_order_id: str) -> OrderResult | None:
        row = self._db.execute(
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
