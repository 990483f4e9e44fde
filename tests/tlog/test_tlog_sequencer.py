"""Sequencer: group commit, acknowledgement after commit, timely checkpoints, failing closed."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.errors import AuditError, InputError
from qward.tlog.audit import verify_log
from qward.tlog.backend import MAX_ENTRY_BYTES, LogBackend, note_checkpoint
from qward.tlog.merkle import leaf_hash, verify_inclusion
from qward.tlog.note import Ed25519NoteSigner, MLDSA44NoteSigner, NoteSigner
from qward.tlog.sequencer import PublishTicket, Sequencer

from .conftest import LogDatabase

ORIGIN = "log.example/sequencer"
SIGNERS = (
    Ed25519NoteSigner(
        name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
    ),
    MLDSA44NoteSigner(name=ORIGIN, private_key=mldsa.MLDSA44PrivateKey.from_seed_bytes(bytes(32))),
)
VERIFIERS = tuple(s.verifier() for s in SIGNERS)


def entry(i: int) -> bytes:
    return f'{{"sequenced":{i}}}'.encode()


class Wrapped:
    """A real store whose ``sequence`` calls are counted, and can be held or made to fail."""

    def __init__(self, store: LogBackend) -> None:
        self._store = store
        self.calls: list[int] = []
        self.durable: list[bool] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.failure: Exception | None = None

    def sequence(self, entries: Sequence[bytes], *, durable: bool = True) -> list[int]:
        self.entered.set()
        self.release.wait()
        if self.failure is not None:
            raise self.failure
        self.calls.append(len(entries))
        self.durable.append(durable)
        return self._store.sequence(entries, durable=durable)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture()
def store(log_db: LogDatabase) -> Iterator[LogBackend]:
    with log_db.open() as opened:
        yield opened


def start(store: Any, **options: Any) -> Sequencer:
    return Sequencer(store=store, origin=ORIGIN, signers=SIGNERS, **options)


def test_concurrent_writers_get_unique_durable_indices(store: LogBackend) -> None:
    published: list[bytes] = []
    results: dict[int, bytes] = {}
    lock = threading.Lock()
    with start(store, checkpoint_interval=0.05, on_publish=published.append) as sequencer:

        def writer(w: int) -> None:
            futures = [(sequencer.add(entry(1000 * w + i)), 1000 * w + i) for i in range(150)]
            group = [entry(1000 * w + 500 + i) for i in range(5)]
            indices = sequencer.add_many(group).result(timeout=10)
            assert indices == list(range(indices[0], indices[0] + 5))
            with lock:
                results.update(zip(indices, group, strict=True))
                for future, n in futures:
                    results[future.result(timeout=10)] = entry(n)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(results) == list(range(6 * 155))
    assert all(store.entry(i) == e for i, e in results.items())
    # close() published a final checkpoint covering every acknowledged entry.
    assert note_checkpoint(published[-1]).size == 6 * 155
    assert list(store.checkpoints()) == published
    assert verify_log(store, origin=ORIGIN, verifiers=VERIFIERS).checkpoints == len(published)


def test_entries_are_batched_into_few_transactions(store: LogBackend) -> None:
    wrapped = Wrapped(store)
    wrapped.release.clear()
    with start(wrapped, max_batch=300) as sequencer:
        first = sequencer.add(entry(0))
        assert wrapped.entered.wait(5)
        # While the first batch is "committing", a thousand more queue up behind it.
        futures = [sequencer.add(entry(i)) for i in range(1, 1000)]
        wrapped.release.set()
        assert [f.result(timeout=10) for f in [first, *futures]] == list(range(1000))
    assert wrapped.calls == [1, 300, 300, 300, 99]


def test_a_future_resolves_only_after_its_commit(store: LogBackend) -> None:
    wrapped = Wrapped(store)
    wrapped.release.clear()
    with start(wrapped) as sequencer:
        future = sequencer.add(entry(0))
        assert wrapped.entered.wait(5)
        time.sleep(0.05)
        assert not future.done() and store.sequenced_size() == 0
        wrapped.release.set()
        assert future.result(timeout=5) == 0
        assert store.entry(0) == entry(0)


def test_max_delay_gathers_a_batch(store: LogBackend) -> None:
    wrapped = Wrapped(store)
    with start(wrapped, max_delay=0.2, max_batch=10) as sequencer:
        futures = [sequencer.add(entry(i)) for i in range(25)]
        assert [f.result(timeout=5) for f in futures] == list(range(25))
    assert wrapped.calls == [10, 10, 5]


def test_a_checkpoint_covers_an_entry_within_the_interval(store: LogBackend) -> None:
    with start(store, checkpoint_interval=0.3) as sequencer:
        # The first checkpoint comes at once; the next at most an interval later.
        sequencer.wait_for_checkpoint(sequencer.add(entry(0)).result(timeout=5), timeout=1)
        index = sequencer.add(entry(1)).result(timeout=5)
        acknowledged = time.monotonic()
        note = sequencer.wait_for_checkpoint(index, timeout=1.0)
        assert time.monotonic() - acknowledged < 1.0
        assert note_checkpoint(note).size == 2


def test_checkpoints_come_at_most_once_an_interval(store: LogBackend) -> None:
    published: list[float] = []
    with start(
        store, checkpoint_interval=0.2, on_publish=lambda _: published.append(time.monotonic())
    ) as sequencer:
        stop = time.monotonic() + 1.0
        while time.monotonic() < stop:
            sequencer.add(entry(0)).result(timeout=5)
    gaps = [b - a for a, b in itertools.pairwise(published[:-1])]
    assert 4 <= len(published) <= 8
    assert min(gaps) >= 0.19


def test_close_drains_the_queue_and_publishes(store: LogBackend) -> None:
    sequencer = start(store, checkpoint_interval=60)
    futures = [sequencer.add(entry(i)) for i in range(500)]
    many = sequencer.add_many([entry(500), entry(501)])
    sequencer.close()
    assert [f.result(timeout=0) for f in futures] == list(range(500))
    assert many.result(timeout=0) == [500, 501]
    latest = store.latest_checkpoint()
    assert latest is not None and note_checkpoint(latest).size == 502
    assert sequencer.latest_checkpoint == latest
    with pytest.raises(AuditError, match="closed"):
        sequencer.add(entry(0))


def test_a_storage_failure_fails_every_waiter_and_later_call(store: LogBackend) -> None:
    wrapped = Wrapped(store)
    wrapped.release.clear()
    sequencer = start(wrapped)
    first = sequencer.add(entry(0))
    assert wrapped.entered.wait(5)
    queued = [sequencer.add(entry(i)) for i in range(1, 10)]
    wrapped.failure = AuditError("transparency log: sequencing failed: disk full")
    wrapped.release.set()
    for future in [first, *queued]:
        with pytest.raises(AuditError, match="disk full"):
            future.result(timeout=5)
    with pytest.raises(AuditError, match="disk full"):
        sequencer.add(entry(11))
    with pytest.raises(AuditError, match="disk full"):
        sequencer.wait_for_checkpoint(0, timeout=1)
    with pytest.raises(AuditError, match="disk full"):
        sequencer.close()
    assert store.sequenced_size() == 0


class _BrokenSigner:
    name = ORIGIN
    key_id = bytes(4)
    algorithm = 1

    def sign(self, message: bytes) -> bytes:
        raise RuntimeError("the HSM is gone")


def test_a_publish_failure_fails_closed(store: LogBackend) -> None:
    broken: Sequence[NoteSigner] = [_BrokenSigner()]  # type: ignore[list-item]
    sequencer = Sequencer(store=store, origin=ORIGIN, signers=broken)
    # The entry is durable and acknowledged; the failure to cover it stops the log.
    assert sequencer.add(entry(0)).result(timeout=5) == 0
    with pytest.raises(AuditError, match="RuntimeError: the HSM is gone"):
        sequencer.wait_for_checkpoint(0, timeout=5)
    with pytest.raises(AuditError, match="HSM"):
        sequencer.add(entry(1))
    with pytest.raises(AuditError, match="HSM"):
        sequencer.close()


def test_a_failing_publish_callback_fails_closed(store: LogBackend) -> None:
    def on_publish(note: bytes) -> None:
        raise OSError("stdout closed")

    sequencer = start(store, on_publish=on_publish)
    sequencer.add(entry(0)).result(timeout=5)
    with pytest.raises(AuditError, match="stdout closed"):
        sequencer.close()


def test_cancelled_and_invalid_entries_are_not_sequenced(store: LogBackend) -> None:
    wrapped = Wrapped(store)
    wrapped.release.clear()
    with start(wrapped) as sequencer:
        sequencer.add(entry(0))
        assert wrapped.entered.wait(5)
        cancelled: Future[int] = sequencer.add(b"cancelled")
        assert cancelled.cancel()
        with pytest.raises(AuditError, match="refused"):
            sequencer.add(b"x" * (1024 * 1024 + 1))
        with pytest.raises(AuditError, match="bytes"):
            sequencer.add_many([entry(1), "text"])  # type: ignore[list-item]
        kept = sequencer.add(entry(2))
        assert sequencer.add_many([]).result(timeout=0) == []
        wrapped.release.set()
        assert kept.result(timeout=5) == 1
    assert [store.entry(i) for i in range(store.sequenced_size())] == [entry(0), entry(2)]


def test_a_new_sequencer_covers_what_a_crashed_one_left(store: LogBackend) -> None:
    store.sequence([entry(0), entry(1)])  # acknowledged by a process that then died
    with start(store) as sequencer:
        note = sequencer.wait_for_checkpoint(1, timeout=5)
        assert note_checkpoint(note).size == 2
        assert sequencer.add(entry(2)).result(timeout=5) == 2


def test_bad_settings_are_input_errors(store: LogBackend) -> None:
    for options in (
        {"max_batch": 0},
        {"max_delay": -1},
        {"checkpoint_interval": -1},
        {"publish_gather": -1},
    ):
        with pytest.raises(InputError):
            start(store, **options)
    with pytest.raises(InputError):
        Sequencer(store=store, origin=ORIGIN, signers=[])


def test_published_entries_come_back_with_a_checkpoint_that_proves_them(
    store: LogBackend,
) -> None:
    wrapped = Wrapped(store)
    published: list[bytes] = []
    with start(wrapped, checkpoint_interval=60, on_publish=published.append) as sequencer:
        indices, note = sequencer.add_published([entry(0), entry(1)]).result(timeout=10)
        assert indices == [0, 1]
        # The sequencing commit skipped its fsync: the checkpoint's commit is the durable one.
        assert wrapped.durable == [False]
        assert published == [note] and store.latest_checkpoint() == note
        checkpoint = note_checkpoint(note)
        assert checkpoint.size == 2
        for index in indices:
            proof = store.inclusion_proof(index, checkpoint.size)
            verify_inclusion(
                leaf_hash=leaf_hash(entry(index)),
                index=index,
                size=checkpoint.size,
                proof=proof,
                root=checkpoint.root_hash,
            )
        # Nothing new to cover: publishing again hands back the same checkpoint.
        assert sequencer.add_published([]).result(timeout=10) == ([], note)


def test_concurrent_published_requests_share_one_checkpoint(store: LogBackend) -> None:
    wrapped = Wrapped(store)
    wrapped.release.clear()
    published: list[bytes] = []
    with start(wrapped, checkpoint_interval=60, on_publish=published.append) as sequencer:
        first = sequencer.add(entry(0))
        assert wrapped.entered.wait(5)
        waiting = [sequencer.add_published([entry(i)]) for i in range(1, 20)]
        wrapped.release.set()
        first.result(timeout=10)
        results = [f.result(timeout=10) for f in waiting]
    assert [indices for indices, _ in results] == [[i] for i in range(1, 20)]
    # One batch behind the first: one sequencing call and one signature for all 19 receipts.
    assert len({note for _, note in results}) == 1
    assert wrapped.calls == [1, 19]
    assert note_checkpoint(results[0][1]).size == 20


def test_a_batch_is_fsynced_unless_every_request_in_it_waived_it(store: LogBackend) -> None:
    wrapped = Wrapped(store)
    wrapped.release.clear()
    with start(wrapped, checkpoint_interval=60) as sequencer:
        first = sequencer.add_many([entry(0)], durable=False)
        assert wrapped.entered.wait(5)
        relaxed = sequencer.add_many([entry(1)], durable=False)
        strict = sequencer.add_many([entry(2)])
        wrapped.release.set()
        assert [f.result(timeout=10) for f in (first, relaxed, strict)] == [[0], [1], [2]]
    assert wrapped.calls == [1, 2] and wrapped.durable == [False, True]


def _gathering(sequencer: Sequencer) -> bool:
    """Whether the publisher waits for an announced request (white-box: its one flag)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if sequencer._gathering:
            return True
        time.sleep(0.005)
    return False


def _gather_for_one(sequencer: Sequencer) -> tuple[PublishTicket, Future[Any]]:
    """Announce a request, queue another that asks for a checkpoint, and wait until the
    publisher gathers for the announced one: its ticket and the waiting request's future."""
    ticket = sequencer.expect_publish()
    waiting = sequencer.add_published([entry(0)])
    assert _gathering(sequencer)
    assert not waiting.done()
    return ticket, waiting


def test_an_announced_request_shares_the_checkpoint_signed_while_it_ran(
    store: LogBackend,
) -> None:
    published: list[bytes] = []
    with start(
        store, checkpoint_interval=60, publish_gather=30, on_publish=published.append
    ) as sequencer:
        ticket, early = _gather_for_one(sequencer)
        started = time.monotonic()
        late = sequencer.add_published([entry(1)], ticket=ticket)
        (first, note), (second, other) = early.result(timeout=10), late.result(timeout=10)
        # The wait ended as the announced request came, not at the 30 s bound.
        assert time.monotonic() - started < 10
    assert (first, second) == ([0], [1]) and note == other
    assert published == [note] and note_checkpoint(note).size == 2


def test_a_lone_request_never_waits_for_a_gathering(store: LogBackend) -> None:
    with start(store, checkpoint_interval=60, publish_gather=30) as sequencer:
        started = time.monotonic()
        indices, note = sequencer.add_published([entry(0)]).result(timeout=10)
        assert time.monotonic() - started < 10
        assert indices == [0] and note_checkpoint(note).size == 1


def test_a_withdrawn_announcement_ends_the_wait(store: LogBackend) -> None:
    with start(store, checkpoint_interval=60, publish_gather=30) as sequencer:
        ticket, waiting = _gather_for_one(sequencer)
        ticket.release()
        ticket.release()  # twice is harmless: the count is not taken below zero
        assert waiting.result(timeout=10)[0] == [0]
        # Nothing is announced any more: the next request is published without a wait.
        started = time.monotonic()
        assert sequencer.add_published([entry(1)]).result(timeout=10)[0] == [1]
        assert time.monotonic() - started < 10


def test_the_wait_for_announced_requests_is_bounded(store: LogBackend) -> None:
    with start(store, checkpoint_interval=60, publish_gather=0.2) as sequencer:
        ticket = sequencer.expect_publish()
        started = time.monotonic()
        assert sequencer.add_published([entry(0)]).result(timeout=10)[0] == [0]
        assert 0.2 <= time.monotonic() - started < 5
        ticket.release()


def test_entries_that_need_no_checkpoint_are_not_held_by_a_gathering(store: LogBackend) -> None:
    published: list[bytes] = []
    with start(
        store, checkpoint_interval=60, publish_gather=30, on_publish=published.append
    ) as sequencer:
        ticket, receipt = _gather_for_one(sequencer)
        # The announced run may be waiting for exactly this record (its key use) to go on.
        assert sequencer.add_many([entry(1)], durable=False).result(timeout=10) == [1]
        assert not receipt.done()
        late = sequencer.add_published([entry(2)], ticket=ticket)
        assert receipt.result(timeout=10) == ([0], published[0])
        assert late.result(timeout=10) == ([2], published[0])
    assert len(published) == 1 and note_checkpoint(published[0]).size == 3


def test_an_invalid_announced_request_releases_its_ticket(store: LogBackend) -> None:
    with start(store, checkpoint_interval=60, publish_gather=30) as sequencer:
        ticket = sequencer.expect_publish()
        with pytest.raises(AuditError, match="over"):
            sequencer.add_published([bytes(MAX_ENTRY_BYTES + 1)], ticket=ticket)
        started = time.monotonic()
        assert sequencer.add_published([entry(0)]).result(timeout=10)[0] == [0]
        assert time.monotonic() - started < 10


def test_a_failure_after_gathering_fails_every_gathered_request(store: LogBackend) -> None:
    wrapped = Wrapped(store)
    sequencer = start(wrapped, checkpoint_interval=60, publish_gather=30)
    ticket, early = _gather_for_one(sequencer)
    wrapped.failure = OSError("disk gone")
    late = sequencer.add_published([entry(1)], ticket=ticket)
    for future in (early, late):
        with pytest.raises(AuditError, match="disk gone"):
            future.result(timeout=10)
    with pytest.raises(AuditError):
        sequencer.close(timeout=10)
    # The first entry was sequenced, never acknowledged: it is in the log, promised to no one.
    assert store.sequenced_size() == 1 and store.latest_checkpoint() is None


def test_a_cancelled_request_is_not_waited_for(store: LogBackend) -> None:
    wrapped = Wrapped(store)
    wrapped.release.clear()
    with start(wrapped, checkpoint_interval=60, publish_gather=30) as sequencer:
        first = sequencer.add(entry(0))
        assert wrapped.entered.wait(5)
        cancelled = sequencer.add_published([entry(1)])
        assert cancelled.cancel()
        wrapped.release.set()
        assert first.result(timeout=10) == 0
        # Nothing announced is still to come: the next receipt is published without a wait.
        started = time.monotonic()
        assert sequencer.add_published([entry(2)]).result(timeout=10)[0] == [1]
        assert time.monotonic() - started < 10


def test_durable_requests_beside_a_receipt_share_its_checkpoint_flush(store: LogBackend) -> None:
    wrapped = Wrapped(store)
    wrapped.release.clear()
    published: list[bytes] = []
    with start(wrapped, checkpoint_interval=60, on_publish=published.append) as sequencer:
        first = sequencer.add(entry(0))
        assert wrapped.entered.wait(5)
        durable = sequencer.add(entry(1))
        receipt = sequencer.add_published([entry(2)])
        wrapped.release.set()
        assert first.result(timeout=10) == 0
        assert durable.result(timeout=10) == 1
        # Answered only once the checkpoint's commit (the batch's one flush) was made.
        assert published and note_checkpoint(published[0]).size == 3
        assert receipt.result(timeout=10) == ([2], published[0])
    assert wrapped.calls == [1, 2] and wrapped.durable == [True, False]
