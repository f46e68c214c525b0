"""What is kept on disk is its owner's alone: var/ 0700, the paper book and its WAL 0600,
under the usual umask (022) that would make them 0755 and 0644."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ops.tools.paths import ensure_nats_passwords, ensure_secret
from worker.brokers.base import Order
from worker.brokers.paper import PaperBroker


@pytest.fixture(autouse=True)
def _usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("ensure", [ensure_secret, ensure_nats_passwords])
def test_var_is_created_private(tmp_path: Path, ensure: Callable[[Path], object]) -> None:
    var = tmp_path / "var"
    ensure(var)
    assert _mode(var) == 0o700
    assert {_mode(f) for f in var.iterdir()} == {0o600}


def test_a_var_left_open_by_an_earlier_version_is_tightened(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    assert _mode(var) == 0o755
    ensure_secret(var)
    assert _mode(var) == 0o700


async def test_the_paper_book_and_its_wal_are_private(tmp_path: Path) -> None:
    db = tmp_path / "var" / "paper.db"
    book = PaperBroker(db)
    try:
        order = Order(
            client_order_id="mode-1", account="default", symbol="AAPL", side="buy",
            quantity=1.0, order_type="market", reference_price=1.0,
        )  # fmt: skip
        await book.place(order)  # the WAL and its index exist once something is written
        files = {f.name: _mode(f) for f in db.parent.iterdir()}
    finally:
        await book.close()
    assert files == {"paper.db": 0o600, "paper.db-wal": 0o600, "paper.db-shm": 0o600}
    assert _mode(db.parent) == 0o700


async def test_a_paper_book_left_open_by_an_earlier_version_is_tightened(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    db = folder / "paper.db"
    db.touch(mode=0o644)
    (folder / "paper.db-wal").touch(mode=0o644)  # as a crash would have left it
    reopened = PaperBroker(db)
    try:
        modes = {f.name: _mode(f) for f in folder.iterdir()}
    finally:
        await reopened.close()
    assert modes["paper.db"] == modes["paper.db-wal"] == 0o600
    assert set(modes.values()) == {0o600}
    assert _mode(folder) == 0o755  # a folder that was there is not the book's to change
