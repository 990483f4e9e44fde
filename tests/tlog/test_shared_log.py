"""Several processes appending to one PostgreSQL log, one publisher at a time under a fenced lease.

These run on the session's real PostgreSQL server, each store on a connection of its own, as
separate cores would be; the multi-process SIGKILL rounds are in test_shared_log_crash.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from qward.errors import AuditError, FencedError
from qward.tlog import merkle
from qward.tlog.audit import verify_log
from qward.tlog.backend import Fence, note_checkpoint
from qward.tlog.note import open_note
from qward.tlog.pg_coordination import PostgresCoordination
from qward.tlog.pg_store import PostgresLogStore
from qward.tlog.shared_sequencer import SharedLogSequencer

from .conftest import LogDatabase, make_log_db
from .crash_writer import ORIGIN, SIGNERS

VERIFIERS = tuple(s.verifier() for s in SIGNERS)


@pytest.fixture()
def pg_log(request: pytest.FixtureRequest, tmp_path: Path) -> LogDatabase:
    return make_log_db("postgres", request, tmp_path)


def _open(db: LogDatabase) -> PostgresLogStore:
    store = PostgresLogStore.open(db.target)
    assert isinstance(store, PostgresLogStore)
    return store


class _Core:
    """One 'core': its own connection, coordination and sequencer on the shared log."""

    def __init__(self, db: LogDatabase, name: str, *, ttl: float = 1.0) -> None:
        self.store = _open(db)
        self.coordination = PostgresCoordination(self.store, holder=name, ttl=ttl)
        self.sequencer = SharedLogSequencer(
            store=self.store,
            origin=ORIGIN,
            signers=SIGNERS,
            coordination=self.coordination,
            checkpoint_interval=0.2,
        )

    def close(self) -> None:
        try:
            self.sequencer.close(timeout=30)
        finally:
            self.store.close()


@pytest.fixture()
def cores(pg_log: LogDatabase) -> Iterator[Callable[..., _Core]]:
    made: list[_Core] = []

    def make(name: str, **options: Any) -> _Core:
        core = _Core(pg_log, name, **options)
        made.append(core)
        return core

    yield make
    for core in made:
        with contextlib.suppress(AuditError):
            core.close()


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- the lease in the store ----------------------------------------------------------------------


def test_a_lease_is_exclusive_until_it_runs_out_and_then_fences_the_old_holder(
    pg_log: LogDatabase,
) -> None:
    with _open(pg_log) as a, _open(pg_log) as b:
        first = a.acquire_lease("core-a", ttl=0.4)
        assert first == Fence("core-a", 1)
        assert b.acquire_lease("core-b", ttl=0.4) is None
        # Renewal keeps the epoch.
        assert a.acquire_lease("core-a", ttl=0.4) == first
        a.sequence([b"one", b"two"])
        a.publish(origin=ORIGIN, signers=SIGNERS, integrate=True, fence=first)
        time.sleep(0.5)
        second = b.acquire_lease("core-b", ttl=5.0)
        assert second == Fence("core-b", 2)
        b.sequence([b"three"])
        # The former holder, back from a pause, can neither publish nor renew.
        with pytest.raises(FencedError, match=r"held by core-b in epoch 2"):
            a.publish(origin=ORIGIN, signers=SIGNERS, integrate=True, fence=first)
        assert a.acquire_lease("core-a", ttl=5.0) is None
        note = b.publish(origin=ORIGIN, signers=SIGNERS, integrate=True, fence=second)
        assert note_checkpoint(note).size == 3
        # Nothing the fenced publish began was kept.
        assert [note_checkpoint(n).size for n in a.checkpoints()] == [2, 3]
        # Released, it can be taken at once, in the next epoch.
        b.release_lease(second)
        assert a.acquire_lease("core-a", ttl=5.0) == Fence("core-a", 3)


def test_a_run_out_lease_fences_even_its_own_holder(pg_log: LogDatabase) -> None:
    with _open(pg_log) as a:
        fence = a.acquire_lease("core-a", ttl=0.2)
        assert fence is not None
        a.sequence([b"x"])
        time.sleep(0.3)
        with pytest.raises(FencedError, match="has run out"):
            a.publish(origin=ORIGIN, signers=SIGNERS, integrate=True, fence=fence)
        assert a.latest_checkpoint() is None


def test_sqlite_has_no_lease_to_publish_under(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with make_log_db("sqlite", request, tmp_path).open() as store:
        store.sequence([b"x"])
        with pytest.raises(AuditError, match="single writer"):
            store.publish(origin=ORIGIN, signers=SIGNERS, integrate=True, fence=Fence("a", 1))


# -- sequencers sharing the log ------------------------------------------------------------------


def _load(core: _Core, count: int, results: list[tuple[list[int], bytes]], seed: int) -> None:
    for n in range(count):
        entry = f"{core.coordination.holder}/{seed}/{n}".encode()
        if n % 3 == 0:
            future: Future[Any] = core.sequencer.add_published([entry])
            results.append(future.result(timeout=30))
        else:
            results.append(([core.sequencer.add(entry).result(timeout=30)], b""))


def test_three_cores_append_concurrently_and_every_covered_entry_is_under_a_checkpoint(
    cores: Callable[..., _Core], pg_log: LogDatabase
) -> None:
    group = [cores(f"core-{n}") for n in range(3)]
    results: list[tuple[list[int], bytes]] = []
    threads = [
        threading.Thread(target=_load, args=(core, 60, results, t))
        for core in group
        for t in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    indices = [i for found, _ in results for i in found]
    # Dense and never used twice across the three cores.
    assert sorted(indices) == list(range(3 * 3 * 60))
    with _open(pg_log) as store:
        for found, note in results:
            if not note:
                continue
            checkpoint = note_checkpoint(note)
            open_note(note, VERIFIERS)
            assert checkpoint.size > found[0]
            proof = store.inclusion_proof(found[0], checkpoint.size)
            merkle.verify_inclusion(
                leaf_hash=merkle.leaf_hash(store.entry(found[0])),
                index=found[0],
                size=checkpoint.size,
                proof=proof,
                root=checkpoint.root_hash,
            )
        holder = store.lease_holder()
        assert holder is not None and holder[0] in {f"core-{n}" for n in range(3)}
    for core in group:
        core.close()
    with _open(pg_log) as store:
        report = verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)
        assert report.entries == 3 * 3 * 60
        # One linear history: each checkpoint extends the one before it.
        sizes = [note_checkpoint(n).size for n in store.checkpoints()]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_when_the_publisher_stops_another_core_takes_over(
    cores: Callable[..., _Core], pg_log: LogDatabase
) -> None:
    first = cores("core-a")
    _wait_for(lambda: first.coordination.fence() is not None)
    second = cores("core-b")
    (index,), note = second.sequencer.add_published([b"by b"]).result(timeout=10)
    assert note_checkpoint(note).size > index
    # The follower asked; the holder published.
    assert second.coordination.fence() is None
    first.close()
    _wait_for(lambda: second.coordination.fence() is not None)
    (index,), note = second.sequencer.add_published([b"by b, now publisher"]).result(timeout=10)
    assert note_checkpoint(note).size > index
    with _open(pg_log) as store:
        assert store.lease_holder() == ("core-b", 2, True)


class _StaleCoordination:
    """A publisher that was paused past its lease and does not know it yet."""

    def __init__(self, fence: Fence) -> None:
        self.stale: Fence | None = fence
        self.lost_fences: list[Fence] = []
        self.wanted = 0

    def start(self, wake: Callable[[str], None]) -> None:
        del wake

    def fence(self) -> Fence | None:
        return self.stale

    def lost(self, fence: Fence) -> None:
        self.lost_fences.append(fence)
        self.stale = None

    def want_checkpoint(self) -> None:
        self.wanted += 1

    def published(self, size: int) -> None:
        raise AssertionError("a fenced publisher announced a checkpoint")

    def close(self) -> None:
        pass


def test_a_stale_publisher_is_fenced_and_keeps_appending(
    cores: Callable[..., _Core], pg_log: LogDatabase
) -> None:
    with _open(pg_log) as side:
        old = side.acquire_lease("core-a", ttl=0.1)
        assert old is not None
        time.sleep(0.2)
    live = cores("core-b")
    _wait_for(lambda: live.coordination.fence() is not None)
    store = _open(pg_log)
    coordination = _StaleCoordination(old)
    stale = SharedLogSequencer(
        store=store,
        origin=ORIGIN,
        signers=SIGNERS,
        coordination=coordination,
        poll_interval=0.02,
    )
    try:
        (index,), note = stale.add_published([b"from the stale core"]).result(timeout=10)
        # Its own publish was refused; the live publisher's checkpoint covers the entry.
        assert coordination.lost_fences == [old]
        assert note_checkpoint(note).size > index
        assert store.entry(index) == b"from the stale core"
    finally:
        stale.close(timeout=30)
        store.close()


def test_a_checkpoint_waiting_for_its_witnesses_is_handed_out_only_once_announced(
    pg_log: LogDatabase,
) -> None:
    # The publisher (here a bare store holding the lease) has stored a checkpoint but not yet
    # collected its cosignatures: a core that only sees it in the store must not hand it out.
    with _open(pg_log) as publisher:
        fence = publisher.acquire_lease("publisher", ttl=30.0)
        assert fence is not None
        store = _open(pg_log)
        follower = SharedLogSequencer(
            store=store,
            origin=ORIGIN,
            signers=SIGNERS,
            coordination=PostgresCoordination(store, holder="follower", ttl=30.0),
            poll_interval=0.02,
            ready=lambda note: False,
        )
        try:
            waiting = follower.add_published([b"needs a cosigned checkpoint"])
            _wait_for(lambda: publisher.sequenced_size() == 1)
            note = publisher.publish(origin=ORIGIN, signers=SIGNERS, integrate=True, fence=fence)
            time.sleep(0.3)
            assert not waiting.done(), "an unannounced checkpoint was handed out"
            publisher.notify(f"published {note_checkpoint(note).size}")
            (index,), handed = waiting.result(timeout=10)
            assert index == 0 and handed == note
        finally:
            follower.close(timeout=30)
            store.close()
