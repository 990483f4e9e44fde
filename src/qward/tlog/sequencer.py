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
3. If a request in the batch was added with ``add_published``, publish a checkpoint covering the
   batch at once (its commit is the batch's fsync: the sequencing commit skips its own), pass it
   through ``on_publish`` (witness cosignatures) and resolve those requests with their indices and
   the checkpoint. Concurrent requests so share one transaction and one checkpoint signature.
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

__all__ = ["Sequencer"]


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
        on_publish: Callable[[bytes], bytes | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1 or max_delay < 0 or checkpoint_interval < 0:
            raise InputError("sequencer: max_batch >= 1, max_delay >= 0, checkpoint_interval >= 0")
        if not signers:
            raise InputError("sequencer: a log needs at least one checkpoint signer")
        self._store = store
        self._origin = origin
        self._signers = tuple(signers)
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._interval = checkpoint_interval
        self._on_publish = on_publish
        self._clock = clock
        # ``_queue`` guards the pending requests, the closing flag and the failure.
        self._queue = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._queued = 0
        self._idle = False
        self._poked = False
        self._closing = False
        self._error: AuditError | None = None
        # ``_published`` guards the latest checkpoint, for ``wait_for_checkpoint``.
        self._published = threading.Condition()
        self._published_size = 0
        self._latest: bytes | None = None
        # Only the loop thread touches these.
        self._acknowledged = 0
        # The first checkpoint is due an interval after start, like every later one.
        self._last_checkpoint = clock()
        self._thread = threading.Thread(target=self._run, name="qward-log-sequencer", daemon=True)
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

    def add_published(self, entries: Sequence[bytes]) -> Future[tuple[list[int], bytes]]:
        """Queue ``entries`` (possibly none) and a checkpoint covering them: the future resolves
        to their indices and that checkpoint (as ``on_publish`` returned it) once it is durable."""
        group = list(entries)
        check_entries(group)
        future: Future[tuple[list[int], bytes]] = Future()
        self._enqueue(_Request(future, group, True, True), max(1, len(group)))
        return future

    def _enqueue(self, request: _Request, count: int) -> None:
        with self._queue:
            if self._error is not None:
                raise self._error
            if self._closing:
                raise AuditError("transparency log sequencer is closed")
            self._pending.append(request)
            self._queued += count
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
            while not self._pending and not self._closing and not self._poked:
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
            return batch

    def _sequence(self, batch: list[_Request]) -> None:
        publish = any(r.publish for r in batch)
        # With a checkpoint to publish, its commit is the fsync that covers these entries.
        indices = self._store_batch(batch, durable=not publish and any(r.durable for r in batch))
        note = self._checkpoint() if publish else b""
        for request, mine in _shares(batch, indices):
            if request.publish:
                request.future.set_result((mine, note))
            else:
                request.future.set_result(mine[0] if isinstance(request.item, bytes) else mine)

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
        with self._queue:
            self._error = error
            waiting = [*batch, *self._pending, *self._unresolved()]
            self._pending.clear()
            self._queued = 0
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
