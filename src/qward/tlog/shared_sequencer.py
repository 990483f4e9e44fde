"""Group commit for a log that several processes append to, only one of which publishes.

``SharedLogSequencer`` is a ``Sequencer`` for a store that several protected cores share (the
PostgreSQL log). Every core sequences its own entries: the store serializes the sequencing
transactions, so indices are dense and never used twice. Checkpoints are different: witnesses must
see one linear history, so only the holder of the publisher lease signs them, under a fence the
store checks in the publishing transaction (``Coordination`` says who holds it).

- A request that needs a covering checkpoint (``add_published``) is sequenced at once and waits,
  unresolved, until a checkpoint of a size beyond its last index is published, by this core if it
  holds the lease, otherwise by the lease holder, whom it asks (``want_checkpoint``) and whose
  announcement (``published``, made only when someone asked) wakes it; it also polls, and asks
  again, in case an announcement is lost.
- The lease holder publishes when asked, when one of its own requests waits, and every
  ``checkpoint_interval`` while entries (anyone's) are uncovered. A store that refuses its fence
  (``FencedError``: the lease ran out or passed on) costs it the lease, not the log.
- ``close`` waits, up to ``close_grace`` seconds, for the checkpoints its waiting requests need,
  then releases the lease so another core takes over at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from qward.errors import AuditError, FencedError
from qward.tlog.backend import Fence, LogBackend, note_checkpoint
from qward.tlog.note import NoteSigner
from qward.tlog.sequencer import Sequencer, _acknowledge, _Request, _shares

__all__ = ["Coordination", "SharedLogSequencer"]


class Coordination(Protocol):
    """How the cores sharing a log agree on who publishes, and tell each other what happened."""

    def start(self, wake: Callable[[str], None]) -> None:
        """Begin holding elections; call ``wake(event)`` on ``"published"`` or ``"wanted"``."""
        ...

    def fence(self) -> Fence | None:
        """The publisher lease, if this process holds it (as far as it knows)."""
        ...

    def lost(self, fence: Fence) -> None:
        """The store refused ``fence``: stop using it."""
        ...

    def want_checkpoint(self) -> None:
        """Ask the publisher for a checkpoint covering what this process sequenced."""
        ...

    def published(self, size: int) -> None:
        """Tell the other processes that the checkpoint of ``size`` is stored, cosigned."""
        ...

    def close(self) -> None:
        """Give up the lease (if held) and stop."""
        ...


class _Waiting(NamedTuple):
    """A sequenced ``add_published`` request and the tree size its checkpoint must reach."""

    request: _Request
    indices: list[int]
    size: int


class SharedLogSequencer(Sequencer):
    """A ``Sequencer`` for one of several processes appending to one log (see the module)."""

    def __init__(
        self,
        *,
        store: LogBackend,
        origin: str,
        signers: Sequence[NoteSigner],
        coordination: Coordination,
        checkpoint_interval: float = 0.5,
        poll_interval: float = 0.05,
        close_grace: float = 10.0,
        on_publish: Callable[[bytes], bytes | None] | None = None,
        on_observe: Callable[[bytes], None] | None = None,
        ready: Callable[[bytes], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_batch: int = 8192,
    ) -> None:
        self._coordination = coordination
        self._poll = poll_interval
        self._grace = close_grace
        self._on_observe = on_observe
        # Whether a checkpoint read from the store may be handed out before the publisher
        # announced it (say, once it carries witness cosignatures); announced ones always may.
        self._ready = ready or (lambda note: True)
        self._announced = 0
        # Only the loop thread touches these, but ``_fail`` may read ``_waiting`` from it too.
        self._waiting: list[_Waiting] = []
        self._wanted = False
        self._seen = False
        self._next_poll = 0.0
        self._closing_since: float | None = None
        super().__init__(
            store=store,
            origin=origin,
            signers=signers,
            max_batch=max_batch,
            checkpoint_interval=checkpoint_interval,
            on_publish=on_publish,
            clock=clock,
        )
        coordination.start(self._notice)

    def _notice(self, event: str) -> None:
        """Another process published a checkpoint, or wants one: look at once."""
        kind, _, size = event.partition(" ")
        if kind == "published":
            if size.isdigit():
                self._announced = max(self._announced, int(size))
            self._seen = True
        elif kind == "wanted":
            self._wanted = True
        self._poke()

    # -- sequencing --------------------------------------------------------------------------

    def _sequence(self, batch: list[_Request]) -> None:
        # A request waiting for a checkpoint is answered only after the publisher's commit of
        # one covering it, whose flush of the server's write-ahead log covers this commit too
        # (the log is flushed in order): only requests answered at once need this one durable.
        durable = any(r.durable and not r.publish for r in batch)
        indices = self._store_batch(batch, durable=durable)
        waiting = False
        for request, mine in _shares(batch, indices):
            if not request.publish:
                _acknowledge(request, mine)
                continue
            # An empty group asks for everything sequenced so far, by any process.
            size = mine[-1] + 1 if mine else self._store.sequenced_size()
            self._waiting.append(_Waiting(request, mine, size))
            waiting = True
        if waiting and self._coordination.fence() is None:
            self._coordination.want_checkpoint()
            self._next_poll = self._clock() + self._poll

    # -- publishing and observing ------------------------------------------------------------

    def _tick(self) -> None:
        fence = self._coordination.fence()
        if fence is not None and self._publish_due():
            self._publish(fence)
        elif fence is None and (self._seen or (self._waiting and self._poll_due())):
            self._seen = False
            self._observe()
        self._settle()

    def _publish_due(self) -> bool:
        if self._waiting or self._wanted:
            return True
        with self._queue:
            closing = self._closing
        if closing:
            # A publisher that stops covers what it acknowledged, as a single core does.
            return self._acknowledged > self._published_size
        if self._clock() < self._last_checkpoint + self._interval:
            return False
        self._last_checkpoint = self._clock()
        return self._store.sequenced_size() > self._published_size

    def _poll_due(self) -> bool:
        now = self._clock()
        if now < self._next_poll:
            return False
        self._next_poll = now + self._poll
        # The publisher may have missed the first request (it changed, or was restarting).
        self._coordination.want_checkpoint()
        return True

    def _publish(self, fence: Fence) -> None:
        # Only a core that asked waits for the announcement; it asks again if it misses one.
        asked, self._wanted = self._wanted, False
        self._last_checkpoint = self._clock()
        try:
            note = self._store.publish(
                origin=self._origin, signers=self._signers, integrate=True, fence=fence
            )
        except FencedError:
            # Another core holds the lease now; it publishes, and this one goes on appending.
            self._coordination.lost(fence)
            return
        if self._on_publish is not None:
            note = self._on_publish(note) or note
        self._show(note)
        if asked:
            self._coordination.published(note_checkpoint(note).size)

    def _observe(self) -> None:
        note = self._store.latest_checkpoint()
        if note is None:
            return
        size = note_checkpoint(note).size
        # Stored, a checkpoint may still be waiting for its witnesses' cosignatures.
        if size > self._published_size and (size <= self._announced or self._ready(note)):
            if self._on_observe is not None:
                self._on_observe(note)
            self._show(note)

    def _show(self, note: bytes) -> None:
        size = note_checkpoint(note).size
        with self._published:
            if size >= self._published_size:
                self._published_size = size
                self._latest = note
                self._published.notify_all()

    def _settle(self) -> None:
        """Resolve every waiting request the latest checkpoint covers."""
        with self._published:
            size, note = self._published_size, self._latest
        if note is None or not self._waiting:
            return
        still: list[_Waiting] = []
        for waiting in self._waiting:
            if waiting.size <= size:
                waiting.request.future.set_result((waiting.indices, note))
            else:
                still.append(waiting)
        self._waiting = still

    # -- the loop's timing and end -----------------------------------------------------------

    def _wait_timeout(self) -> float | None:
        now = self._clock()
        deadlines = []
        if self._waiting:
            deadlines.append(self._next_poll)
        if self._coordination.fence() is not None:
            deadlines.append(self._last_checkpoint + self._interval)
        else:
            # A follower wakes now and then to see whether it has become the publisher.
            deadlines.append(now + self._interval)
        return max(0.0, min(deadlines) - now)

    def _drained(self) -> bool:
        if not self._waiting:
            return True
        now = self._clock()
        if self._closing_since is None:
            self._closing_since = now
        return now - self._closing_since > self._grace

    def _unresolved(self) -> list[_Request]:
        return [w.request for w in self._waiting]

    def _stopped(self) -> None:
        left, self._waiting = self._waiting, []
        error = AuditError("transparency log: closed before a checkpoint covered the entries")
        for waiting in left:
            if not waiting.request.future.done():
                waiting.request.future.set_exception(error)
        self._coordination.close()
