"""The publisher lease and the wake-ups of cores sharing one PostgreSQL log.

``PostgresCoordination`` is the ``Coordination`` a ``SharedLogSequencer`` runs under when its store
is a ``PostgresLogStore``. Two daemon threads:

- the *elector* asks the store for the publisher lease every ``ttl / 3`` seconds (taking it if it
  is free or has run out, renewing it if held). A core believes it holds the lease only until
  ``ttl / 2`` after the last successful grant by its own clock, so it stops publishing before the
  server would let another core take over; the store's fence check is what guarantees safety,
  this only avoids attempts bound to fail. A database error costs the lease; the elector goes on.
- the *listener* holds a connection of its own, ``LISTEN``\\s on the log's channel and hands the
  events of this log (``published``, ``wanted``) to the sequencer. If the connection drops it
  reconnects; the sequencer's polling covers the gap.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import psycopg

from qward.errors import AuditError
from qward.tlog.backend import Fence
from qward.tlog.pg_store import NOTIFY_CHANNEL, PostgresLogStore

__all__ = ["DEFAULT_LEASE_SECONDS", "PostgresCoordination"]

#: How long a granted publisher lease lasts without renewal, in the server's seconds.
DEFAULT_LEASE_SECONDS = 3.0
_RECONNECT_SECONDS = 0.5


class PostgresCoordination:
    """Elects one publisher among the cores sharing ``store``'s log (see the module)."""

    def __init__(
        self,
        store: PostgresLogStore,
        *,
        holder: str,
        ttl: float = DEFAULT_LEASE_SECONDS,
        on_change: Callable[[Fence | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not holder or ttl <= 0:
            raise AuditError("publisher lease: a holder name and a positive duration are needed")
        self._store = store
        self._holder = holder
        self._ttl = ttl
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._fence: Fence | None = None
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._wake: Callable[[str], None] = lambda event: None
        self._threads: list[threading.Thread] = []

    @property
    def holder(self) -> str:
        """This core's name in the lease."""
        return self._holder

    def start(self, wake: Callable[[str], None]) -> None:
        """Start the elector and the listener; ``wake`` gets this log's events."""
        self._wake = wake
        for name, target in (("elector", self._elect), ("listener", self._listen)):
            thread = threading.Thread(target=target, name=f"qward-log-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def fence(self) -> Fence | None:
        """The lease, while this core holds it and its last grant is recent enough."""
        with self._lock:
            if self._fence is not None and self._clock() < self._valid_until:
                return self._fence
            return None

    def lost(self, fence: Fence) -> None:
        """Drop ``fence`` (the store refused it); the elector may win a newer one later."""
        with self._lock:
            if self._fence == fence:
                self._fence = None
        self._changed(None)

    def want_checkpoint(self) -> None:
        """Ask the publisher for a checkpoint."""
        self._notify("wanted")

    def published(self, size: int) -> None:
        """Announce the checkpoint of ``size`` (stored with its cosignatures) to the others."""
        self._notify(f"published {size}")

    def close(self) -> None:
        """Stop both threads and release the lease if this core holds it."""
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=self._ttl + 2 * _RECONNECT_SECONDS)
        with self._lock:
            fence, self._fence = self._fence, None
        if fence is not None:
            # Another core takes over at once instead of after the lease runs out.
            with contextlib.suppress(AuditError):
                self._store.release_lease(fence)

    # -- threads -----------------------------------------------------------------------------

    def _elect(self) -> None:
        while not self._stop.is_set():
            asked = self._clock()
            try:
                fence = self._store.acquire_lease(self._holder, ttl=self._ttl)
            except AuditError:
                fence = None
            with self._lock:
                before = self._fence
                self._fence = fence
                # Counted from before the request: the server's grant began no earlier.
                self._valid_until = asked + self._ttl / 2 if fence is not None else 0.0
            if fence != before:
                self._changed(fence)
            self._stop.wait(self._ttl / 3)

    def _changed(self, fence: Fence | None) -> None:
        if self._on_change is not None:
            self._on_change(fence)
        # A new publisher looks at once for requests waiting for it.
        self._wake("leader" if fence is not None else "follower")

    def _listen(self) -> None:
        prefix = f"{self._store.schema} "
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._store.dsn, autocommit=True) as connection:
                    connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not self._stop.is_set():
                        for message in connection.notifies(timeout=_RECONNECT_SECONDS):
                            if message.payload.startswith(prefix):
                                self._wake(message.payload[len(prefix) :])
            except psycopg.Error:
                self._stop.wait(_RECONNECT_SECONDS)

    def _notify(self, event: str) -> None:
        # A lost notification only delays a waiting request until the next poll.
        with contextlib.suppress(AuditError):
            self._store.notify(event)
