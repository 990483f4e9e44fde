"""The core's trust bundle as the public server sees it, kept current (issue 11.5).

Keys rotate in the core while the public server runs: ``TrustSource`` re-reads the bundle from the
core at most once per ``min_interval`` seconds, and at once when the core says a key is unknown.
Receipts are checked against it before they are returned (issue 11.11): a receipt that would fail
``qward verify`` — for example one without the witness quorum the trust bundle pins — is never
answered with a 200.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from qward.core_api import CoreInterface
from qward.errors import AuditError, VerificationError
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import Verifier

__all__ = ["TrustSource"]


class TrustSource:
    """The current trust bundle of ``core``, fetched again at most once per ``min_interval``."""

    def __init__(
        self,
        core: CoreInterface,
        *,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._core = core
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._trust = core.trust()
        self._fetched = clock()
        # One verifier per bundle: it keeps the checkpoints it has opened, and the receipts of
        # one batch share their checkpoint, so its signatures are checked once per batch.
        self._verifier = (self._trust, Verifier(trust=self._trust))

    def current(self, *, force: bool = False) -> TrustBundle:
        """The bundle, re-read from the core if it is older than ``min_interval`` (or ``force``);
        blocking, so call it from a worker thread."""
        with self._lock:
            if force or self._clock() - self._fetched >= self._min_interval:
                self._trust = self._core.trust()
                self._fetched = self._clock()
            return self._trust

    def current_nowait(self) -> TrustBundle | None:
        """The bundle if it is fresh and nobody is re-reading it, else ``None`` (then call
        ``current`` from a worker thread): lets the event loop skip a thread hop per request."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            fresh = self._clock() - self._fetched < self._min_interval
            return self._trust if fresh else None
        finally:
            self._lock.release()

    def check_receipt(self, receipt: bytes, trust: TrustBundle) -> None:
        """Raise ``AuditError`` unless ``receipt`` verifies against ``trust`` (witness quorum
        included): the caller must not return it as a success."""
        pinned, verifier = self._verifier
        if pinned is not trust:
            verifier = Verifier(trust=trust)
            self._verifier = (trust, verifier)
        try:
            verifier.verify(receipt)
        except VerificationError as exc:
            raise AuditError(
                f"the receipt does not verify against the core's trust bundle ({exc}); "
                "no result is returned"
            ) from None
