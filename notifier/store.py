"""The notifier's own durable state: one SQLite file, every change in one transaction.

What it holds, and why it must survive a `kill -9`:
- `done`: the EVENTS sequences already taken in. An event is acked only after the
  transaction that took it in committed; an ack lost with the process brings the event
  back, and `done` makes the second delivery a no-op (no repeated message).
- `outbox`: each message still to send, one row per (message, target). A target that
  is down keeps its rows, retried with backoff, in order; the others are not held up.
- `folds`: per (account, kind), when a message last went out and how many were folded
  into the next one since (the burst summary survives a restart).
- `streaks`: per account, the retryable failures since its last executed order (a
  broker down, and whether that was said, so its recovery is said too).
- `flags`: one-off facts, e.g. that the DLQ depth over its threshold was reported.
- `down`: per target, when a send to it first failed since it last took a message
  (what /readyz reports as a target that is down; a restart does not reset it).

`synchronous=FULL`: a commit is on disk before the event is acked.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS done (seq INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_target ON outbox (target, id);
CREATE TABLE IF NOT EXISTS folds (
    account TEXT NOT NULL, kind TEXT NOT NULL,
    last_sent REAL NOT NULL, folded INTEGER NOT NULL DEFAULT 0, latest TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (account, kind)
);
CREATE TABLE IF NOT EXISTS streaks (
    account TEXT PRIMARY KEY, since REAL NOT NULL, failures INTEGER NOT NULL,
    last_error TEXT NOT NULL, down_said INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS flags (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS down (target TEXT PRIMARY KEY, since REAL NOT NULL);
"""
SYSTEM: Final = ""  # the `account` of news about the whole system


@dataclass(frozen=True)
class Pending:
    """One message owed to one target."""

    id: int
    target: str
    title: str
    body: str
    tries: int
    next_try: float


@dataclass(frozen=True)
class Fold:
    """Messages of one (account, kind) held back since the last one went out."""

    account: str
    kind: str
    last_sent: float
    folded: int
    latest: str


@dataclass(frozen=True)
class Down:
    """A target that has taken no message since `since`, and what it is owed."""

    target: str
    since: float
    owed: int


@dataclass(frozen=True)
class Streak:
    """An account's retryable failures since its last executed order."""

    account: str
    since: float
    failures: int
    last_error: str
    down_said: bool


class Store:
    """The SQLite file; use `with store.tx():` around every change."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[None]:
        """A transaction: committed on leaving the block, rolled back on an exception."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- events taken in -------------------------------------------------------------

    def is_done(self, seq: int) -> bool:
        """Whether the event at EVENTS sequence `seq` was taken in already."""
        return self._db.execute("SELECT 1 FROM done WHERE seq = ?", (seq,)).fetchone() is not None

    def mark_done(self, seq: int, now: float) -> None:
        """Record that the event at `seq` was taken in."""
        self._db.execute("INSERT OR IGNORE INTO done (seq, at) VALUES (?, ?)", (seq, now))

    def prune_done(self, before: float) -> None:
        """Forget sequences taken in before `before` (their redelivery window is over)."""
        self._db.execute("DELETE FROM done WHERE at < ?", (before,))

    # --- the outbox ------------------------------------------------------------------

    def enqueue(self, target: str, title: str, body: str, now: float) -> None:
        """Owe `target` this message."""
        self._db.execute(
            "INSERT INTO outbox (target, title, body, next_try) VALUES (?, ?, ?, ?)",
            (target, title, body, now),
        )

    def heads(self) -> list[Pending]:
        """The oldest message owed to each target (a target gets its messages in order)."""
        rows = self._db.execute(
            "SELECT id, target, title, body, tries, next_try FROM outbox"
            " WHERE id IN (SELECT MIN(id) FROM outbox GROUP BY target) ORDER BY id"
        ).fetchall()
        return [Pending(*row) for row in rows]

    def sent(self, pending_id: int) -> None:
        """The message was delivered: owed no more."""
        self._db.execute("DELETE FROM outbox WHERE id = ?", (pending_id,))

    def failed(self, pending_id: int, next_try: float) -> None:
        """The message was not delivered: try again at `next_try`."""
        self._db.execute(
            "UPDATE outbox SET tries = tries + 1, next_try = ? WHERE id = ?",
            (next_try, pending_id),
        )

    def owed(self) -> int:
        """How many messages are still to be sent."""
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def owed_by_target(self) -> dict[str, int]:
        """How many messages each target is still owed (targets owed none: absent)."""
        rows = self._db.execute("SELECT target, COUNT(*) FROM outbox GROUP BY target")
        return {target: int(count) for target, count in rows.fetchall()}

    # --- targets that are down -------------------------------------------------------

    def target_failed(self, target: str, at: float) -> None:
        """A send to `target` failed at `at` (its downtime starts at the first failure)."""
        self._db.execute("INSERT OR IGNORE INTO down (target, since) VALUES (?, ?)", (target, at))

    def target_took(self, target: str) -> None:
        """`target` took a message (or is no longer one): it is not down."""
        self._db.execute("DELETE FROM down WHERE target = ?", (target,))

    def down(self, before: float) -> list[Down]:
        """Targets down since before `before` that are still owed messages."""
        rows = self._db.execute(
            "SELECT down.target, down.since, COUNT(outbox.id) FROM down"
            " JOIN outbox ON outbox.target = down.target"
            " WHERE down.since <= ? GROUP BY down.target ORDER BY down.target",
            (before,),
        ).fetchall()
        return [Down(*row) for row in rows]

    # --- folding ---------------------------------------------------------------------

    def fold(self, account: str, kind: str) -> Fold | None:
        """The fold state of (account, kind); None before its first message."""
        row = self._db.execute(
            "SELECT account, kind, last_sent, folded, latest FROM folds"
            " WHERE account = ? AND kind = ?",
            (account, kind),
        ).fetchone()
        return None if row is None else Fold(*row)

    def went_out(self, account: str, kind: str, now: float) -> None:
        """A message of (account, kind) went out now: nothing folded since."""
        self._db.execute(
            "INSERT INTO folds (account, kind, last_sent) VALUES (?, ?, ?)"
            " ON CONFLICT DO UPDATE SET last_sent = excluded.last_sent, folded = 0, latest = ''",
            (account, kind, now),
        )

    def held_back(self, account: str, kind: str, latest: str) -> None:
        """One more message of (account, kind) folded into the next."""
        self._db.execute(
            "UPDATE folds SET folded = folded + 1, latest = ? WHERE account = ? AND kind = ?",
            (latest, account, kind),
        )

    def due_folds(self, before: float) -> list[Fold]:
        """Folds with messages held back whose interval ended (last sent before `before`)."""
        rows = self._db.execute(
            "SELECT account, kind, last_sent, folded, latest FROM folds"
            " WHERE folded > 0 AND last_sent <= ? ORDER BY account, kind",
            (before,),
        ).fetchall()
        return [Fold(*row) for row in rows]

    # --- broker streaks --------------------------------------------------------------

    def streak(self, account: str) -> Streak | None:
        """The account's open failure streak."""
        row = self._db.execute(
            "SELECT account, since, failures, last_error, down_said FROM streaks WHERE account = ?",
            (account,),
        ).fetchone()
        return None if row is None else _streak(row)

    def streaks(self) -> list[Streak]:
        """Every open failure streak."""
        rows = self._db.execute(
            "SELECT account, since, failures, last_error, down_said FROM streaks ORDER BY account"
        ).fetchall()
        return [_streak(row) for row in rows]

    def failure(self, account: str, at: float, error: str) -> None:
        """One more retryable failure for `account` (the streak starts at the first)."""
        self._db.execute(
            "INSERT INTO streaks (account, since, failures, last_error) VALUES (?, ?, 1, ?)"
            " ON CONFLICT DO UPDATE SET failures = failures + 1, last_error = excluded.last_error",
            (account, at, error),
        )

    def down_said(self, account: str) -> None:
        """The account's broker was reported down."""
        self._db.execute("UPDATE streaks SET down_said = 1 WHERE account = ?", (account,))

    def end_streak(self, account: str) -> None:
        """An order went through: the streak is over."""
        self._db.execute("DELETE FROM streaks WHERE account = ?", (account,))

    # --- flags -----------------------------------------------------------------------

    def flag(self, name: str) -> bool:
        """Whether the flag is set."""
        return (
            self._db.execute("SELECT 1 FROM flags WHERE name = ?", (name,)).fetchone() is not None
        )

    def set_flag(self, name: str, value: bool) -> None:
        """Set or clear the flag."""
        if value:
            self._db.execute("INSERT OR IGNORE INTO flags (name) VALUES (?)", (name,))
        else:
            self._db.execute("DELETE FROM flags WHERE name = ?", (name,))


def _streak(row: tuple[str, float, int, str, int]) -> Streak:
    account, since, failures, last_error, down_said = row
    return Streak(account, since, failures, last_error, down_said=bool(down_said))
