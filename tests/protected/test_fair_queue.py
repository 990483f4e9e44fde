"""``FairQueue``: items in FIFO order, and blocked getters served in the order they came."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from qward.protected.fair_queue import FairQueue

_PATIENCE = 10.0


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the queue")
        time.sleep(0.001)


def _getter(queue: FairQueue[str], got: dict[str, str], name: str) -> threading.Thread:
    """A thread that takes one item into ``got[name]``, started once it is sure to block."""
    before = queue.waiting
    thread = threading.Thread(target=lambda: got.__setitem__(name, queue.get()), daemon=True)
    thread.start()
    _until(lambda: queue.waiting == before + 1)
    return thread


def test_items_come_out_in_the_order_they_went_in() -> None:
    queue: FairQueue[int] = FairQueue()
    for item in range(5):
        queue.put(item)
    assert [queue.get() for _ in range(5)] == list(range(5))
    assert queue.waiting == 0


def test_blocked_getters_are_served_first_come_first_served() -> None:
    queue: FairQueue[str] = FairQueue()
    got: dict[str, str] = {}
    threads = [_getter(queue, got, name) for name in ("first", "second", "third")]
    for item in ("a", "b", "c"):
        queue.put(item)
    for thread in threads:
        thread.join(_PATIENCE)
    assert got == {"first": "a", "second": "b", "third": "c"}


def test_a_later_getter_does_not_take_an_item_handed_to_a_waiter() -> None:
    queue: FairQueue[str] = FairQueue()
    got: dict[str, str] = {}
    waiter = _getter(queue, got, "waiter")
    queue.put("x")  # handed to the waiter, even if it has not woken yet
    newcomer = _getter(queue, got, "newcomer")  # so this one blocks
    waiter.join(_PATIENCE)
    assert got == {"waiter": "x"}
    assert newcomer.is_alive()
    queue.put("y")
    newcomer.join(_PATIENCE)
    assert got == {"waiter": "x", "newcomer": "y"}


def test_items_are_never_lost_or_lent_twice_under_contention() -> None:
    queue: FairQueue[int] = FairQueue()
    pool = (1, 2)
    for item in pool:
        queue.put(item)
    in_use: set[int] = set()
    guard = threading.Lock()
    errors: list[str] = []

    def borrower() -> None:
        for _ in range(300):
            item = queue.get()
            with guard:
                if item in in_use:
                    errors.append(f"item {item} lent twice")
                in_use.add(item)
            time.sleep(0)
            with guard:
                in_use.discard(item)
            queue.put(item)

    threads = [threading.Thread(target=borrower) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(_PATIENCE * 3)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sorted(queue.get() for _ in pool) == list(pool)
    assert queue.waiting == 0
