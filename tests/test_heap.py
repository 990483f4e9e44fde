"""``settle_heap``: start-up garbage is collected, survivors frozen, later garbage still freed."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from qward.heap import settle_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    """A reference cycle nothing else holds: only the cyclic collector can free it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def settled() -> Iterator[None]:
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()  # the rest of the suite runs with an ordinary collector


def test_startup_garbage_is_collected_not_frozen(settled: None) -> None:
    gc.disable()  # no collection may happen before ``settle_heap`` makes its own
    try:
        garbage = _cycle()
        assert garbage() is not None
        settle_heap()
    finally:
        gc.enable()
    assert garbage() is None


def test_survivors_are_frozen_out_of_later_collections(settled: None) -> None:
    kept = _Node()
    kept.other = kept  # a container the collector tracks
    assert gc.is_tracked(kept)
    settle_heap()
    assert gc.get_freeze_count() > 0
    tracked = gc.get_objects()
    assert not any(obj is kept for obj in tracked)


def test_garbage_made_after_settling_is_still_freed(settled: None) -> None:
    settle_heap()
    garbage = _cycle()
    gc.collect()
    assert garbage() is None


_EXITING_PROCESS = """
import sqlite3, sys
from qward.heap import settle_heap

class Store:  # built at start-up, in a reference cycle, never closed explicitly
    def __init__(self, path):
        self.me = self
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE t (x)")

store = Store(sys.argv[1])
settle_heap()
store.db.execute("INSERT INTO t VALUES (1)")
"""


def test_what_start_up_built_is_still_finalized_at_exit(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    subprocess.run([sys.executable, "-c", _EXITING_PROCESS, str(db)], check=True, timeout=120)
    # Closed at exit: SQLite folded the write-ahead log back into the database and removed it.
    assert not (tmp_path / "log.sqlite-wal").exists()
