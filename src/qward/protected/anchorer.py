"""The core's background anchorer: signed checkpoints into a ledger, off the request path.

The auditor hands every newly published checkpoint note to ``notify`` (in the sequencer's
thread, which only queues it). The anchorer's own thread counts them and, when an anchor is due
(``every_checkpoints`` counted since the last anchor, or ``interval_seconds`` passed with at least
one), anchors the newest note, waits until the ledger has ``confirmations`` blocks on it, checks
the proof in full and appends a ``qward/anchor/v1`` entry. Every failure is reported on stderr and
retried with exponential backoff; a ledger that is down costs anchors, never requests.

A checkpoint whose growth consists only of the anchorer's own entries is not counted, so an idle
core does not anchor the entries that record its anchors, forever.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from qward.anchoring.base import AnchoredTime, AnchorProof
from qward.encoding import b64encode, parse_canonical_json
from qward.errors import ProofError, QwardError
from qward.receipts.entries import anchor_entry
from qward.tlog.backend import note_checkpoint

__all__ = ["Anchorer", "Ledger", "Schedule"]

_MAX_QUEUED = 4096
_CONFIRM_POLL = 0.5


class Ledger(Protocol):
    """What the anchorer needs from a ledger (``EthereumLedger``)."""

    def anchor(self, note: bytes) -> AnchorProof:
        """Record the note's anchor digest; return the proof."""
        ...

    def confirmations(self, proof: AnchorProof) -> int:
        """Blocks on top of the proof's, its own included."""
        ...

    def verify(self, note: bytes, proof: AnchorProof) -> AnchoredTime:
        """Check the proof in full; raise if it does not hold."""
        ...


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """When an anchor is due, how many confirmations it needs, and how retries back off."""

    every_checkpoints: int | None
    interval_seconds: float | None
    confirmations: int
    backoff_initial: float = 1.0
    backoff_max: float = 60.0


def _stderr(message: str) -> None:
    print(f"qward core: anchor: {message}", file=sys.stderr, flush=True)


class Anchorer:
    """One background thread anchoring the log's checkpoints; ``stop`` ends it cleanly."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        schedule: Schedule,
        record: Callable[[bytes], int],
        report: Callable[[str], None] = _stderr,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._schedule = schedule
        self._record = record
        self._report = report
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[bytes] = deque(maxlen=_MAX_QUEUED)
        self._stopping = False
        # Only the anchorer's thread touches the fields below.
        self._own: set[int] = set()
        self._seen_size = 0
        self._counted: list[int] = []  # sizes of counted checkpoints not yet anchored
        self._newest: bytes | None = None
        self._last_anchor = clock()
        self._thread = threading.Thread(target=self._run, name="qward-anchorer", daemon=True)

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def notify(self, note: bytes) -> None:
        """A new checkpoint was published (the auditor's listener): queue it, never block."""
        with self._cond:
            self._queue.append(note)
            self._cond.notify()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the thread; an anchor in flight is abandoned (the next start anchors anew)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            note = self._wait_due()
            if note is None:
                return
            self._anchor_with_retry(note)

    def _wait_due(self) -> bytes | None:
        """Block until an anchor is due (its note) or the anchorer stops (``None``)."""
        while True:
            with self._cond:
                if self._stopping:
                    return None
                if not self._queue:
                    self._cond.wait(timeout=self._until_due())
                if self._stopping:
                    return None
            self._drain()
            if self._due():
                return self._newest

    def _until_due(self) -> float | None:
        interval = self._schedule.interval_seconds
        if interval is None or not self._counted:
            return None
        return max(0.0, interval - (self._clock() - self._last_anchor))

    def _due(self) -> bool:
        every, interval = self._schedule.every_checkpoints, self._schedule.interval_seconds
        if not self._counted or self._newest is None:
            return False
        if every is not None and len(self._counted) >= every:
            return True
        return interval is not None and self._clock() - self._last_anchor >= interval

    def _drain(self) -> None:
        """Count the queued checkpoints that grew the log by more than the anchorer's entries."""
        with self._cond:
            notes = list(self._queue)
            self._queue.clear()
        for note in notes:
            size = note_checkpoint(note).size
            if size <= self._seen_size:
                continue
            if not all(i in self._own for i in range(self._seen_size, size)):
                self._counted.append(size)
            self._own = {i for i in self._own if i >= size}
            self._seen_size, self._newest = size, note

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless stopped; True if the anchorer is stopping."""
        with self._cond:
            if not self._stopping:
                self._cond.wait_for(lambda: self._stopping, timeout=seconds)
            return self._stopping

    def _anchor_with_retry(self, note: bytes) -> None:
        delay = self._schedule.backoff_initial
        proof: AnchorProof | None = None
        while True:
            try:
                if proof is None:
                    self._drain()
                    note = self._newest or note  # the newest checkpoint covers the most
                    proof = self._ledger.anchor(note)
                if not self._confirmed(proof):
                    return  # stopping
                self._ledger.verify(note, proof)
                self._log(note, proof)
                return
            except ProofError as exc:
                # The transaction left the canonical chain (or never matched): anchor again.
                self._report(f"anchor proof did not hold, anchoring again: {exc}")
                proof = None
            except QwardError as exc:
                self._report(f"attempt failed, retrying in {delay:.1f} s: {exc}")
            except Exception as exc:  # the thread must survive any ledger failure
                self._report(f"attempt failed ({type(exc).__name__}), retrying in {delay:.1f} s")
            if self._sleep(delay):
                return
            delay = min(delay * 2, self._schedule.backoff_max)

    def _confirmed(self, proof: AnchorProof) -> bool:
        """Wait until the ledger has the configured confirmations; False if stopping."""
        while self._ledger.confirmations(proof) < self._schedule.confirmations:
            if self._sleep(_CONFIRM_POLL):
                return False
        return True

    def _log(self, note: bytes, proof: AnchorProof) -> None:
        checkpoint = note_checkpoint(note)
        entry = anchor_entry(
            origin=checkpoint.origin,
            size=checkpoint.size,
            root_hash=b64encode(checkpoint.root_hash),
            note=note.decode("utf-8"),
            proof=parse_canonical_json(proof.to_json(), what="anchor proof"),
            at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        index = self._record(entry)
        self._own.add(index)
        self._counted = [s for s in self._counted if s > checkpoint.size]
        self._last_anchor = self._clock()
        self._report(
            f"checkpoint {checkpoint.size} anchored in {proof.kind} "
            f"tx {proof.data.get('tx_hash')} (log entry {index})"
        )
