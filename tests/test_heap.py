"""``settle_heap``: start-up garbage is collected, survivors frozen, later garbage still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

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
