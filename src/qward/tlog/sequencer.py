"""Group commit for the transparency log: many writers, one fsync per batch, a checkpoint a second.

``Sequencer`` stands in front of a ``LogBackend``. Any number of threads call ``add`` or
``add_many`` and get a ``Future``; one background thread loops:

1. Take the pending entries: everything queued, waiting up to ``max_delay`` for more while fewer
   than ``max_batch`` are queued. An ``add_many`` group is never split.
2. Sequence them with one ``store.sequence`` call (one transaction, one fsync), and only after it
   commits resolve their futures with their indices. A resolved future is the acknowledgement: the
   entry is durable, and an entry whose future did not resolve was never promised. A batch in
   which every request was added with ``durable=False`` commits without the fsync (it survives a
   crash of the process; the next durable commit makes it survive power loss too).
3. Requests added with ``add_published`` go, once their entries are sequenced (without an fsync
   of their own), to a second thread, the publisher, which publishes a checkpoint covering them
   (its commit is their fsync), passes it through ``on_publish`` (witness cosignatures) and
   resolves them with their indices and the checkpoint; durable requests sequenced in the same
   batch are answered after that commit too, rather than paying for a flush of their own.
   Concurrent requests so share one checkpoint signature, and the loop goes on sequencing while
   one is signed. With ``publish_gather``, the publisher first waits up to that long for the
   requests announced with ``expect_publish`` that have not reached it yet (PostgreSQL's
   ``commit_delay`` with ``commit_siblings``, for checkpoints): under load one signature then
   covers many requests, while a lone request, with nothing announced, never waits.
4. When entries were acknowledged that no checkpoint covers yet, and ``checkpoint_interval`` has
   passed since the last checkpoint began, integrate and publish, so that a checkpoint covers an
   entry within about that interval plus the time to integrate and sign.

It fails closed: the first failure of the store, of the signers or of the ``on_publish`` callback
fails every waiting future with ``AuditError``, and every later call raises it; a new
``Sequencer`` over a reopened store resumes, integrating whatever was sequenced before. ``close``
drains the queue, publishes a final checkpoint covering every acknowledged entry, and stops.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import suppress
from types import TracebackType
from typing import Any, NamedTuple

from qward.errors import AuditError, InputError
from qward.tlog.backend import LogBackend, check_entries, note_checkpoint
from qward.tlog.note import NoteSigner

__all__ = ["PublishTicket", "Sequencer"]


class PublishTicket:
    """A caller's word that it will soon ask for a checkpoint (``Sequencer.expect_publish``).

    Released by the ``add_published`` call it is passed to, or by ``release`` when that call
    will not come (the run failed); releasing twice is harmless.
    """

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        """Withdraw the announcement (idempotent)."""
        release, self._release = self._release, None
        if release is not None:
            release()


class _Request(NamedTuple):
    """One queued request: a single entry (resolved with its index) or a group (with its
    indices, and with the checkpoint covering them when ``publish``)."""

    future: Future[Any]
    item: bytes | list[bytes]
    durable: bool = True
    publish: bool = False


def _shares(batch: list[_Request], indices: list[int]) -> Iterator[tuple[_Request, list[int]]]:
    """Each request of ``batch`` with the indices its entries got (in ``indices``' order)."""
    position = 0
    for request in batch:
        count = 1 if isinstance(request.item, bytes) else len(request.item)
        yield request, indices[position : position + count]
        position += count


def _acknowledge(request: _Request, indices: list[int]) -> None:
    """Resolve an ``add`` (its index) or ``add_many`` (their indices) request."""
    request.future.set_result(indices[0] if isinstance(request.item, bytes) else indices)


def _as_audit_error(exc: BaseException) -> AuditError:
    if isinstance(exc, AuditError):
        return exc
    return AuditError(f"transparency log sequencer failed: {type(exc).__name__}: {exc}")


class Sequencer:
    """Batches concurrent appends into one durable transaction each; publishes checkpoints."""

    def __init__(
        self,
        *,
        store: LogBackend,
        origin: str,
        signers: Sequence[NoteSigner],
        max_batch: int = 8192,
        max_delay: float = 0.0,
        checkpoint_interval: float = 0.5,
        publish_gather: float = 0.0,
        on_publish: Callable[[bytes], bytes | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1 or max_delay < 0 or checkpoint_interval < 0 or publish_gather < 0:
            raise InputError(
                "sequencer: max_batch >= 1; max_delay, checkpoint_interval and publish_gather >= 0"
            )
        if not signers:
            raise InputError("sequencer: a log needs at least one checkpoint signer")
        self._store = store
        self._origin = origin
        self._signers = tuple(signers)
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._interval = checkpoint_interval
        self._gather = publish_gather
        self._on_publish = on_publish
        self._clock = clock
        # ``_lock`` guards the pending requests, the closing flag, the failure, the announcements
        # and the hand-over to the publisher; the loop waits on ``_queue``, the publisher on
        # ``_handoff``.
        self._lock = threading.RLock()
        self._queue = threading.Condition(self._lock)
        self._handoff = threading.Condition(self._lock)
        self._pending: deque[_Request] = deque()
        self._queued = 0
        self._idle = False
        self._poked = False
        self._closing = False
        self._error: AuditError | None = None
        # Announced ``add_published`` callers not queued yet; queued publish requests not yet
        # handed to the publisher (counted only when it gathers); those handed over; whether
        # the publisher waits for more.
        self._expected = 0
        self._awaiting = 0
        self._handed: list[tuple[_Request, list[int]]] = []
        self._gathering = False
        self._publisher_done = False
        # One checkpoint at a time: the publisher's and the loop's backstop ones.
        self._publishing = threading.Lock()
        # ``_published`` guards the latest checkpoint, for ``wait_for_checkpoint``.
        self._published = threading.Condition()
        self._published_size = 0
        self._latest: bytes | None = None
        # Only the loop thread touches these.
        self._acknowledged = 0
        # The first checkpoint is due an interval after start, like every later one.
        self._last_checkpoint = clock()
        self._publisher = threading.Thread(
            target=self._publish_loop, name="qward-log-publisher", daemon=True
        )
        self._thread = threading.Thread(target=self._run, name="qward-log-sequencer", daemon=True)
        self._publisher.start()
        self._thread.start()

    # -- the writers' side -------------------------------------------------------------------

    def add(self, entry: bytes) -> Future[int]:
        """Queue ``entry``; the future resolves to its index once it is durably sequenced."""
        check_entries([entry])
        future: Future[int] = Future()
        self._enqueue(_Request(future, entry), 1)
        return future

    def add_many(self, entries: Sequence[bytes], *, durable: bool = True) -> Future[list[int]]:
        """Queue ``entries`` as one group with consecutive indices, acknowledged together.

        Without ``durable`` the acknowledgement comes after a commit that survives a crash of the
        process but not yet a power loss (see ``LogBackend.sequence``).
        """
        group = list(entries)
        check_entries(group)
        future: Future[list[int]] = Future()
        if not group:
            future.set_result([])
            return future
        self._enqueue(_Request(future, group, durable), len(group))
        return future

    def add_published(
        self, entries: Sequence[bytes], *, ticket: PublishTicket | None = None
    ) -> Future[tuple[list[int], bytes]]:
        """Queue ``entries`` (possibly none) and a checkpoint covering them: the future resolves
        to their indices and that checkpoint (as ``on_publish`` returned it) once it is durable.
        ``ticket`` (from ``expect_publish``) is released as the request is queued."""
        group = list(entries)
        try:
            check_entries(group)
        except AuditError:
            if ticket is not None:
                ticket.release()
            raise
        future: Future[tuple[list[int], bytes]] = Future()
        self._enqueue(_Request(future, group, True, True), max(1, len(group)), ticket)
        return future

    def expect_publish(self) -> PublishTicket:
        """Announce an ``add_published`` call to come, so that a checkpoint about to be signed
        waits for it (up to ``publish_gather``); pass the ticket to that call, or release it."""
        with self._queue:
            self._expected += 1
        return PublishTicket(self._unexpect)

    def _unexpect(self) -> None:
        with self._lock:
            self._expected -= 1
            if self._gathering and self._expected + self._awaiting <= 0:
                self._handoff.notify()

    def _enqueue(self, request: _Request, count: int, ticket: PublishTicket | None = None) -> None:
        with self._queue:
            try:
                if self._error is not None:
                    raise self._error
                if self._closing:
                    raise AuditError("transparency log sequencer is closed")
                self._pending.append(request)
                self._queued += count
                if request.publish and self._gather > 0:
                    self._awaiting += 1
            finally:
                if ticket is not None:
                    # Under the lock (re-entrant): queued and withdrawn at once.
                    ticket.release()
            # The loop only needs waking when it sleeps for lack of work or its batch is full.
            if self._idle or self._queued >= self._max_batch:
                self._queue.notify()

    def wait_for_checkpoint(self, index: int, timeout: float | None = None) -> bytes:
        """Block until a published checkpoint covers entry ``index``; returns that note."""
        with self._published:
            covered = self._published.wait_for(
                lambda: self._published_size > index or self._error is not None, timeout
            )
            if self._error is not None:
                raise self._error
            if not covered or self._latest is None:
                raise AuditError(f"no checkpoint covers log entry {index} after {timeout} s")
            return self._latest

    def set_signers(self, signers: Sequence[NoteSigner]) -> None:
        """Sign later checkpoints with ``signers`` (a checkpoint key rotation)."""
        if not signers:
            raise InputError("sequencer: a log needs at least one checkpoint signer")
        self._signers = tuple(signers)

    def covered(self, note: bytes) -> None:
        """Tell the sequencer that ``note``, published by someone else, covers its tree size.

        A caller that publishes on its own (say, to hand a checkpoint to a request at once)
        saves the loop a redundant checkpoint for entries that ``note`` already covers.
        """
        size = note_checkpoint(note).size
        with self._published:
            if size > self._published_size:
                self._published_size = size
                self._latest = note
                self._published.notify_all()

    @property
    def failed(self) -> bool:
        """Whether the sequencer has failed (and so refuses every call from now on)."""
        with self._queue:
            return self._error is not None

    @property
    def latest_checkpoint(self) -> bytes | None:
        """The last checkpoint this sequencer published, if any."""
        with self._published:
            return self._latest

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        batch: list[_Request] = []
        try:
            self._acknowledged = self._store.sequenced_size()
            latest = self._store.latest_checkpoint()
            with self._published:
                self._published_size = 0 if latest is None else note_checkpoint(latest).size
                self._latest = latest
            while True:
                batch = self._take()
                if self.failed:  # the publisher failed: the log is closed to every request
                    break
                if batch:
                    self._sequence(batch)
                self._tick()
                with self._queue:
                    if self._closing and not self._pending and self._drained():
                        break
        except BaseException as exc:
            # Every failure, whatever its type, must reach the waiters: the log fails closed.
            self._fail(exc, batch)
        finally:
            self._stop_publisher()
            self._stopped()

    # -- hooks for a log that several processes append to (``SharedLogSequencer``) ---------

    def _tick(self) -> None:
        """After each batch (or wake-up): publish a checkpoint if one is due."""
        if self._checkpoint_due():
            self._checkpoint()

    def _drained(self) -> bool:
        """Whether nothing but the queue keeps the loop from stopping once closed."""
        return True

    def _stopped(self) -> None:
        """The loop has ended, normally or not."""

    def _wait_timeout(self) -> float | None:
        """How long the loop may sleep for lack of work (None: until woken)."""
        return self._until_checkpoint()

    def _poke(self) -> None:
        """Wake the loop even with nothing queued, so that it runs ``_tick``."""
        with self._queue:
            self._poked = True
            self._queue.notify()

    def _until_checkpoint(self) -> float | None:
        """Seconds until a checkpoint is due, or None if every acknowledged entry is covered."""
        if self._acknowledged <= self._published_size:
            return None
        return max(0.0, self._last_checkpoint + self._interval - self._clock())

    def _take(self) -> list[_Request]:
        with self._queue:
            while (
                not self._pending and not self._closing and not self._poked and self._error is None
            ):
                timeout = self._wait_timeout()
                if timeout == 0:
                    return []
                self._idle = True
                self._queue.wait(timeout)
                self._idle = False
            self._poked = False
            if self._max_delay and not self._closing and self._queued < self._max_batch:
                self._queue.wait(self._max_delay)
            batch: list[_Request] = []
            taken = 0
            while self._pending and (not batch or taken < self._max_batch):
                request = self._pending[0]
                size = 1 if isinstance(request.item, bytes) else max(1, len(request.item))
                if batch and taken + size > self._max_batch:
                    break
                self._pending.popleft()
                self._queued -= size
                # After this, a caller's ``cancel`` fails, so the result can always be set.
                if request.future.set_running_or_notify_cancel():
                    batch.append(request)
                    taken += size
                elif request.publish and self._gather > 0:
                    self._awaiting -= 1  # cancelled: it will never reach the publisher
            return batch

    def _sequence(self, batch: list[_Request]) -> None:
        # With a checkpoint to publish, its commit is the fsync that covers this batch: requests
        # that need one are answered after it (with the publisher's), the rest at once.
        publish = any(r.publish for r in batch)
        durable = not publish and any(r.durable for r in batch)
        indices = self._store_batch(batch, durable=durable)
        handed: list[tuple[_Request, list[int]]] = []
        for request, mine in _shares(batch, indices):
            if request.publish or (publish and request.durable):
                handed.append((request, mine))
            else:
                _acknowledge(request, mine)
        if handed:
            self._hand_over(handed)

    def _hand_over(self, handed: list[tuple[_Request, list[int]]]) -> None:
        """Give sequenced requests to the publisher, to answer after its commit: those that wait
        for a checkpoint, and those whose flush it is (failed if it stopped)."""
        with self._lock:
            if self._gather > 0:
                self._awaiting -= sum(1 for request, _ in handed if request.publish)
            if self._error is None and not self._publisher_done:
                self._handed.extend(handed)
                self._handoff.notify()
                return
            error = self._error or AuditError("transparency log sequencer is closed")
        for request, _ in handed:
            with suppress(InvalidStateError):
                request.future.set_exception(error)

    # -- the publisher thread ----------------------------------------------------------------

    def _publish_loop(self) -> None:
        group: list[tuple[_Request, list[int]]] = []
        try:
            while True:
                group = self._next_group()
                if not group:
                    return
                note = self._checkpoint()
                for request, mine in group:
                    if request.publish:
                        request.future.set_result((mine, note))
                    else:
                        _acknowledge(request, mine)
                group = []
        except BaseException as exc:
            self._fail(exc, [request for request, _ in group])

    def _next_group(self) -> list[tuple[_Request, list[int]]]:
        """The requests to publish next (after gathering); empty when the publisher stops."""
        with self._lock:
            while not self._handed and not self._publisher_done and self._error is None:
                self._handoff.wait()
            if self._error is not None or not self._handed:
                return []
            if self._gather > 0:
                deadline = time.monotonic() + self._gather
                self._gathering = True
                try:
                    while (
                        self._expected + self._awaiting > 0
                        and not self._closing
                        and self._error is None
                        and (left := deadline - time.monotonic()) > 0
                    ):
                        self._handoff.wait(left)
                finally:
                    self._gathering = False
            group, self._handed = self._handed, []
            return group

    def _stop_publisher(self) -> None:
        """Let the publisher finish what it was handed, then stop it (from the loop thread)."""
        with self._lock:
            self._publisher_done = True
            self._handoff.notify()
        self._publisher.join()

    def _store_batch(self, batch: list[_Request], *, durable: bool) -> list[int]:
        """Sequence the entries of ``batch`` in one store transaction; returns their indices."""
        entries: list[bytes] = []
        for request in batch:
            if isinstance(request.item, bytes):
                entries.append(request.item)
            else:
                entries.extend(request.item)
        if not entries:
            return []
        indices = self._store.sequence(entries, durable=durable)
        if len(indices) != len(entries):
            raise AuditError("transparency log: the store acknowledged a different entry count")
        self._acknowledged = indices[-1] + 1
        return indices

    def _checkpoint_due(self) -> bool:
        until = self._until_checkpoint()
        if until is None:
            return False
        with self._queue:
            return until == 0 or (self._closing and not self._pending)

    def _checkpoint(self) -> bytes:
        with self._publishing:
            return self._checkpoint_locked()

    def _checkpoint_locked(self) -> bytes:
        self._last_checkpoint = self._clock()
        note = self._store.publish(origin=self._origin, signers=self._signers, integrate=True)
        if self._on_publish is not None:
            # It may return the note as it should be handed out (with witness cosignatures).
            note = self._on_publish(note) or note
        with self._published:
            self._published_size = note_checkpoint(note).size
            self._latest = note
            self._published.notify_all()
        return note

    def _fail(self, exc: BaseException, batch: list[_Request]) -> None:
        error = _as_audit_error(exc)
        with self._lock:
            if self._error is None:
                self._error = error
            error = self._error
            waiting = [
                *batch,
                *self._pending,
                *(request for request, _ in self._handed),
                *self._unresolved(),
            ]
            self._pending.clear()
            self._handed.clear()
            self._queued = 0
            self._awaiting = 0
            self._queue.notify_all()
            self._handoff.notify_all()
        for request in waiting:
            # A future already acknowledged, or cancelled by its caller, keeps its state.
            with suppress(InvalidStateError):
                request.future.set_exception(error)
        with self._published:
            self._published.notify_all()

    def _unresolved(self) -> list[_Request]:
        """Requests sequenced but still waiting for something (a checkpoint published elsewhere)."""
        return []

    # -- lifetime ----------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Sequence everything queued, publish a final checkpoint, stop; raise if it failed."""
        with self._queue:
            self._closing = True
            self._queue.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AuditError(f"transparency log sequencer did not stop within {timeout} s")
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Sequencer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
