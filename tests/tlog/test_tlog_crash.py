"""Crash safety: SIGKILL the log process at random points under load, then audit what it left.

Each round starts ``crash_writer.py`` (a Sequencer with four writer threads appending random
entries and groups, a checkpoint every 50 ms), waits a random time, and kills it with SIGKILL,
the way a power cut or the OOM killer would stop it: between transactions, inside one, or during
a checkpoint. The writer prints every acknowledgement and published checkpoint only after the
store committed it, so what it printed is exactly what it promised. After each kill:

1. every acknowledged entry is in the log, at its acknowledged index, with its exact bytes;
2. every checkpoint the writer published is stored, and (at the end) consistent with the final
   tree, which a fresh publish extends;
3. the whole log passes the full audit (``verify_log``) every few rounds and at the end.

The next round reopens the same log, so recovery from every earlier crash is exercised too. The
quick variant kills a few times per backend; the slow one (``-m slow``) 200 times per backend.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qward.tlog import merkle
from qward.tlog.audit import verify_log
from qward.tlog.backend import note_checkpoint

from .conftest import BACKENDS, LogDatabase, make_log_db
from .crash_writer import ORIGIN, SIGNERS

WRITER = Path(__file__).with_name("crash_writer.py")
VERIFIERS = tuple(s.verifier() for s in SIGNERS)
SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Promises:
    """What the killed writers acknowledged, across every round."""

    entries: dict[int, bytes] = field(default_factory=dict)
    checkpoints: list[bytes] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)

    def take(self, line: bytes) -> None:
        kind, _, rest = line.partition(b" ")
        if kind == b"A":
            index, data = rest.split(b" ")
            entry = bytes.fromhex(data.decode())
            previous = self.entries.setdefault(int(index), entry)
            assert previous == entry, f"index {int(index)} was acknowledged twice, differently"
        elif kind == b"C":
            note = base64.b64decode(rest, validate=True)
            # Several writers of one log all report the checkpoints they saw: check each once.
            if note not in self.seen:
                self.seen.add(note)
                self.checkpoints.append(note)


def _kill_one_writer(db: LogDatabase, seed: int, promises: Promises, rng: random.Random) -> int:
    """Run the writer until a random moment after it is ready, SIGKILL it; returns its ack count."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with subprocess.Popen(
        [sys.executable, str(WRITER), db.kind, db.target, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        out = process.stdout
        ready = out.readline()
        assert ready == b"R\n", process.stderr.read().decode(errors="replace")
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(out.readline, b"")))
        reader.start()
        time.sleep(rng.uniform(0.0, 0.25))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        reader.join(timeout=30)
        errors = process.stderr.read().decode(errors="replace")
    assert process.returncode == -signal.SIGKILL, f"the writer died on its own: {errors}"
    acks = 0
    for line in lines:
        # The last line may be cut short by the kill: a line is only a promise once complete.
        if line.endswith(b"\n"):
            promises.take(line.rstrip(b"\n"))
            acks += line.startswith(b"A ")
    return acks


def _check_promises(
    db: LogDatabase, promises: Promises, *, full_audit: bool, since: int = 0
) -> None:
    """Promises from index ``since`` on (all of them on full-audit rounds) are kept."""
    with db.open() as store:
        sequenced = store.sequenced_size()
        for index, entry in promises.entries.items():
            if index < since and not full_audit:
                continue
            assert index < sequenced, f"acknowledged entry {index} is missing"
            assert store.entry(index) == entry, f"acknowledged entry {index} changed"
        stored = set(store.checkpoints())
        for note in promises.checkpoints:
            assert note in stored, "a published checkpoint is not in the store"
        if full_audit:
            report = verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)
            assert report.entries == sequenced


def _final_consistency(db: LogDatabase, promises: Promises) -> None:
    """A fresh publish covers everything and extends every checkpoint any writer published."""
    with db.open() as store:
        store.integrate()
        final = note_checkpoint(store.publish(origin=ORIGIN, signers=SIGNERS))
        assert final.size == store.sequenced_size()
        for note in promises.checkpoints:
            old = note_checkpoint(note)
            merkle.verify_consistency(
                old_size=old.size,
                new_size=final.size,
                old_root=old.root_hash,
                new_root=final.root_hash,
                proof=store.consistency_proof(old.size, final.size),
            )
        verify_log(store, origin=ORIGIN, verifiers=VERIFIERS)


def _crash_rounds(db: LogDatabase, rounds: int, audit_every: int) -> Promises:
    rng = random.Random(rounds)
    promises = Promises()
    total_acks = 0
    checked = 0
    for n in range(rounds):
        total_acks += _kill_one_writer(db, n, promises, rng)
        # Each round checks what it added; every few rounds everything is checked again.
        _check_promises(db, promises, full_audit=(n + 1) % audit_every == 0, since=checked)
        checked = max(promises.entries, default=-1) + 1
    # Killing before anything was acknowledged every time would prove nothing.
    assert total_acks > rounds
    assert promises.checkpoints
    _check_promises(db, promises, full_audit=True)
    _final_consistency(db, promises)
    return promises


@pytest.mark.parametrize("kind", BACKENDS)
def test_sigkill_under_load_loses_no_acknowledged_entry(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _crash_rounds(make_log_db(kind, request, tmp_path), rounds=10, audit_every=5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", BACKENDS)
def test_sigkill_200_times_under_load(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _crash_rounds(make_log_db(kind, request, tmp_path), rounds=200, audit_every=25)
