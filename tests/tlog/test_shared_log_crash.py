"""Crash safety of a log that three processes append to: SIGKILL one at random, restart it, repeat.

Three ``crash_writer.py postgres-shared`` processes (each a ``SharedLogSequencer`` with its own
connection and a 1 s publisher lease, four writer threads, some of them waiting for covering
checkpoints) append to one PostgreSQL log. Each round kills one of them at a random moment (the
publisher or not, mid-transaction or not) and starts a new one in its place, so the lease is lost
by crashes and taken over many times. Every acknowledgement and every checkpoint a writer printed
was committed first, so after each round:

1. every acknowledged entry is in the log at its index with its bytes, and no index was
   acknowledged twice with different bytes (by any of the writers, across all rounds);
2. every checkpoint any writer published or handed to a waiting request is stored;
3. every few rounds (when all three are killed at once) and at the end the whole log passes the
   full audit; at the end every checkpoint is consistent with the final tree (so with every
   earlier one).

The quick variant runs 8 rounds; the slow one (``-m slow``, run by CI) 120.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import LogDatabase, make_log_db
from .test_tlog_crash import SRC, WRITER, Promises, _check_promises, _final_consistency

_WRITERS = 3


class _Writer:
    """One running writer process and the lines it printed so far."""

    def __init__(self, db: LogDatabase, holder: str, seed: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        self.process = subprocess.Popen(
            [sys.executable, str(WRITER), "postgres-shared", db.target, str(seed), holder],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        assert ready == b"R\n", self._errors()
        self.lines: list[bytes] = []
        out = self.process.stdout
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(out.readline, b"")))
        self._reader.start()

    def _errors(self) -> str:
        assert self.process.stderr is not None
        self.process.kill()
        return self.process.stderr.read().decode(errors="replace")

    def kill(self, promises: Promises) -> int:
        """SIGKILL it and take its complete lines as promises; returns its ack count."""
        alive = self.process.poll() is None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        assert self.process.stderr is not None
        errors = self.process.stderr.read().decode(errors="replace")
        self.process.stdout.close()  # type: ignore[union-attr]
        self.process.stderr.close()
        assert alive and self.process.returncode == -signal.SIGKILL, (
            f"a writer died on its own: {errors}"
        )
        acks = 0
        for line in self.lines:
            # The last line may be cut short by the kill: a line is only a promise once complete.
            if line.endswith(b"\n"):
                promises.take(line.rstrip(b"\n"))
                acks += line.startswith(b"A ")
        return acks


def _rounds(db: LogDatabase, rounds: int, audit_every: int) -> Promises:
    rng = random.Random(rounds * 7919)
    promises = Promises()
    writers = [_Writer(db, f"core-{n}", n) for n in range(_WRITERS)]
    acks = 0
    checked = 0
    try:
        for n in range(rounds):
            time.sleep(rng.uniform(0.05, 0.4))
            full = (n + 1) % audit_every == 0
            # The full audit reads a still log: on those rounds every writer dies at once.
            victims = range(_WRITERS) if full else [rng.randrange(_WRITERS)]
            for victim in victims:
                acks += writers[victim].kill(promises)
            _check_promises(db, promises, full_audit=full, since=checked)
            checked = max(promises.entries, default=-1) + 1
            for victim in victims:
                writers[victim] = _Writer(db, f"core-{victim}", _WRITERS * (n + 1) + victim)
    finally:
        for writer in writers:
            if writer.process.poll() is None:
                acks += writer.kill(promises)
    # Killing before anything was acknowledged every time would prove nothing.
    assert acks > rounds
    assert len(promises.checkpoints) > rounds
    _check_promises(db, promises, full_audit=True)
    _final_consistency(db, promises)
    return promises


def test_three_writers_killed_at_random_lose_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _rounds(make_log_db("postgres", request, tmp_path), rounds=8, audit_every=4)


@pytest.mark.slow
def test_three_writers_killed_120_times_lose_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _rounds(make_log_db("postgres", request, tmp_path), rounds=120, audit_every=20)
