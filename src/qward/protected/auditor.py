"""Fail-closed audit: nothing happens unless its log entry is durably sequenced first."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TypeVar

from qward.errors import AuditError, NotFoundError
from qward.protected.tracing import tracer
from qward.tlog.backend import LogBackend, note_checkpoint
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.layout import (
    TILE_WIDTH,
    encode_entry_bundle,
    parse_tile_path,
    tile_hashes,
    tile_width_at,
)
from qward.tlog.note import NoteSigner, note_signatures
from qward.tlog.sequencer import PublishTicket, Sequencer
from qward.tlog.shared_sequencer import Coordination, SharedLogSequencer
from qward.tlog.witness_client import WitnessClient

__all__ = ["Auditor"]

_APPEND_TIMEOUT = 30.0
_T = TypeVar("_T")
_BACKSTOP_INTERVAL = 1.0
_RESTART_INTERVAL = 1.0
# The longest a checkpoint about to be signed waits for receipts announced but not yet queued. A
# run announces its receipt once its model has run, so the wait is for a receipt body and its
# append: well under a millisecond on an idle core; the bound matters only when it is saturated.
_PUBLISH_GATHER = 0.004


class Auditor:
    """Appends entries to the transparency log and publishes signed checkpoints.

    ``record`` returns only after the entries are committed; callers perform the audited action
    after it returns, so an action without a record cannot happen. ``record_covered`` sequences
    entries and returns once a checkpoint covering them is published: its return is durable.
    ``commit`` publishes a checkpoint covering everything sequenced so far. Every checkpoint is
    published by the sequencer (its publisher thread), so concurrent requests share one.

    With ``coordination`` the log is shared with other cores (``SharedLogSequencer``): only the
    holder of the publisher lease publishes, and the others hand out its checkpoints. With
    ``reopen``, a failed store (the database went away) is replaced on a later call.
    """

    def __init__(
        self,
        *,
        store: LogBackend,
        origin: str,
        signers: Sequence[NoteSigner],
        witnesses: WitnessClient | None = None,
        coordination: Callable[[LogBackend], Coordination] | None = None,
        reopen: Callable[[], LogBackend] | None = None,
    ) -> None:
        self._store = store
        # Witnesses cosign each new checkpoint before it is handed out (none unless configured).
        self._witnesses = witnesses
        self._origin = origin
        self._signers = tuple(signers)
        self._latest_lock = threading.Lock()
        self._latest: tuple[bytes, Checkpoint] | None = None
        self._listeners: list[Callable[[bytes], None]] = []
        # Several cores share the log when there is a coordination (the publisher lease).
        self._coordination = coordination
        # After the store fails (the database went away), a later call reopens it.
        self._reopen = reopen
        self._restart_lock = threading.Lock()
        self._last_restart = 0.0
        self._sequencer = self._start(store)

    def _start(self, store: LogBackend) -> Sequencer:
        # The sequencer's own checkpoints are a backstop, so that entries no request commits
        # (access records, say) are covered within about a second.
        if self._coordination is None:
            return Sequencer(
                store=store,
                origin=self._origin,
                signers=self._signers,
                checkpoint_interval=_BACKSTOP_INTERVAL,
                publish_gather=_PUBLISH_GATHER,
                on_publish=self._published,
            )
        return SharedLogSequencer(
            store=store,
            origin=self._origin,
            signers=self._signers,
            coordination=self._coordination(store),
            checkpoint_interval=_BACKSTOP_INTERVAL,
            on_publish=self._published,
            on_observe=self._observed,
            ready=self._cosigned,
        )

    def _cosigned(self, note: bytes) -> bool:
        """Whether ``note``, read from the shared store, has been through the witnesses."""
        return self._witnesses is None or len(note_signatures(note)[1]) > len(self._signers)

    def _live(self) -> Sequencer:
        """The sequencer; if it failed, a new one over a reopened store (at most once a second).

        Whatever the failed one had not acknowledged was refused to its callers; a new
        sequencer resumes from what the store holds, so nothing acknowledged is lost.
        """
        sequencer = self._sequencer
        if not sequencer.failed or self._reopen is None:
            return sequencer
        with self._restart_lock:
            if self._sequencer is not sequencer:
                return self._sequencer
            now = time.monotonic()
            if now - self._last_restart < _RESTART_INTERVAL:
                return sequencer
            self._last_restart = now
            store = self._reopen()
            with contextlib.suppress(AuditError):
                sequencer.close(timeout=_APPEND_TIMEOUT)
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = store
            self._sequencer = self._start(store)
            return self._sequencer

    @property
    def origin(self) -> str:
        """The log's origin line."""
        return self._origin

    def record(self, entries: Sequence[bytes], *, durable: bool = True) -> list[int]:
        """Sequence ``entries``; raise ``AuditError`` if that is not certain.

        Concurrent callers share one transaction (group commit in the ``Sequencer``); each
        returns only once its own entries are committed. Without ``durable`` the commit survives
        a crash of the core but reaches the disk with the next durable commit: for records that
        must precede an action whose outcome is only acknowledged after such a commit.
        """
        with tracer().start_as_current_span(
            "qward.log.append", attributes={"qward.entries": len(entries)}
        ):
            return self._wait(self._live().add_many(entries, durable=durable))

    def expect_publish(self) -> PublishTicket:
        """Announce a ``record_covered`` call to come (see ``Sequencer.expect_publish``): a
        checkpoint signed meanwhile waits briefly for it, so concurrent runs share one."""
        return self._live().expect_publish()

    def record_covered(
        self, entries: Sequence[bytes], *, ticket: PublishTicket | None = None
    ) -> tuple[list[int], bytes, Checkpoint]:
        """Sequence ``entries`` and publish a (cosigned) checkpoint covering them, durably;
        returns their indices, the signed note and its parsed body."""
        with tracer().start_as_current_span(
            "qward.log.append_publish", attributes={"qward.entries": len(entries)}
        ):
            indices, note = self._wait(self._live().add_published(entries, ticket=ticket))
        return indices, note, note_checkpoint(note)

    def commit(self, *, covering: int | None = None) -> tuple[bytes, Checkpoint]:
        """Publish a checkpoint covering entry ``covering`` (or everything sequenced so far);
        returns the signed note and its parsed body. Concurrent callers share checkpoints."""
        with self._latest_lock:
            latest = self._latest
        if covering is not None and latest is not None and latest[1].size > covering:
            return latest
        _, note, checkpoint = self.record_covered([])
        return note, checkpoint

    @staticmethod
    def _wait(future: Future[_T]) -> _T:
        try:
            return future.result(timeout=_APPEND_TIMEOUT)
        except AuditError:
            raise
        except Exception as exc:
            why = type(exc).__name__
            raise AuditError(f"the transparency log refused the entry: {why}") from None

    def _published(self, note: bytes) -> bytes:
        """Every new checkpoint, in a sequencer thread: cosigned before anyone sees it."""
        note = self._cosign(note)
        self._observed(note)
        return note

    def _observed(self, note: bytes) -> None:
        """A new checkpoint, published (and cosigned) here or by another core of the log."""
        checkpoint = note_checkpoint(note)
        with self._latest_lock:
            if self._latest is None or self._latest[1].size <= checkpoint.size:
                self._latest = (note, checkpoint)
        for listener in tuple(self._listeners):
            listener(note)

    def add_listener(self, listener: Callable[[bytes], None]) -> None:
        """Call ``listener(note)`` with every newly published (cosigned) checkpoint note.

        It runs in a sequencer thread, so it must only hand the note over, never block.
        """
        self._listeners.append(listener)

    def set_signers(self, signers: Sequence[NoteSigner]) -> None:
        """Sign every later checkpoint with ``signers`` (after a checkpoint key rotation)."""
        self._signers = tuple(signers)
        self._sequencer.set_signers(signers)

    def close(self) -> None:
        """Drain pending appends, publish a final checkpoint, stop the sequencer and close the
        store (it is the auditor's: a reopened one is too)."""
        try:
            self._sequencer.close(timeout=_APPEND_TIMEOUT)
        finally:
            self._store.close()

    def _cosign(self, note: bytes) -> bytes:
        """Collect witness cosignatures on a newly published ``note`` and store them with it."""
        # A note already carrying more than the log's own signatures was cosigned when published.
        if self._witnesses is None or len(note_signatures(note)[1]) > len(self._signers):
            return note
        with tracer().start_as_current_span("qward.log.cosign"):
            cosigned = self._witnesses.cosign(note, self._store.consistency_proof)
        if cosigned != note:
            self._store.add_cosignatures(cosigned)
        return cosigned

    def inclusion_proof(self, index: int, size: int) -> tuple[bytes, ...]:
        """Inclusion proof from the store."""
        return tuple(self._store.inclusion_proof(index, size))

    def consistency_proof(self, old_size: int, new_size: int) -> tuple[bytes, ...]:
        """Consistency proof from the store."""
        return tuple(self._store.consistency_proof(old_size, new_size))

    def tile(self, path: str) -> bytes:
        """A C2SP tlog-tiles resource, served only within the latest published checkpoint."""
        ref = parse_tile_path(path)
        note = self.latest_checkpoint()
        size = note_checkpoint(note).size
        if tile_width_at(ref, size) < ref.width:
            raise NotFoundError(f"{path} is not part of the published tree of {size} entries")
        if ref.level is not None:
            return tile_hashes(ref, self._store.node)
        first = ref.index * TILE_WIDTH
        return encode_entry_bundle([self._store.entry(first + i) for i in range(ref.width)])

    def latest_checkpoint(self) -> bytes:
        """The latest published checkpoint note, publishing one if none exists yet."""
        note = self._store.latest_checkpoint()
        return note if note is not None else self.commit()[0]
