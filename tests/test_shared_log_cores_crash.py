"""Three real protected cores on one PostgreSQL log, SIGKILLed and restarted at random under load.

Each core is a real ``python -m qward.protected`` with its own state directory and the shared log
identity, driven by two client threads running the iris model in a loop through the SDK. A run
counts as acknowledged only once the SDK verified its receipt (an inclusion proof to a checkpoint
signed with the log's keys). Each round kills one core at a random moment (the publisher or not,
mid-run or not) with SIGKILL and starts it again on the same state directory. Afterwards:

1. every acknowledged receipt's entry is in the log, at its index, byte for byte, and no index
   was acknowledged for two different receipts;
2. every checkpoint the clients were given is consistent with the final tree;
3. ``qward log verify`` passes on the whole log, written by three cores and 100 crashes.

Slow (``-m slow``, run by CI): 100 rounds.
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

import psycopg
import pytest

from qward.errors import QwardError
from qward.sdk.client import Client
from qward.sdk.core_client import CoreClient
from qward.sdk.core_process import CoreProcess, socket_path
from qward.tlog import merkle
from qward.tlog.backend import note_checkpoint

from conftest import example_bytes, iris_inputs
from postgres_server import PostgresServer

_CORES = 3
_CLIENTS = 2
ROUNDS = int(os.environ.get("QWARD_CRASH_ROUNDS", "100"))


class _Acks:
    """What the clients were promised: entry bytes by log index, and checkpoints seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[int, bytes] = {}
        self.checkpoints: set[bytes] = set()
        self.refused = 0

    def add(self, index: int, entry: bytes, checkpoint: bytes) -> None:
        with self.lock:
            previous = self.entries.setdefault(index, entry)
            assert previous == entry, f"log index {index} was acknowledged for two receipts"
            self.checkpoints.add(checkpoint)


def _drive(state_dir: Path, model: str, acks: _Acks, stop: threading.Event) -> None:
    inputs, seed = iris_inputs()
    while not stop.is_set():
        try:
            with CoreClient(socket_path(state_dir)) as connection:
                sdk = Client(connection, trust=connection.trust())
                while not stop.is_set():
                    run = sdk.run(model, inputs, seed=seed)
                    bundle = run.verified.bundle
                    acks.add(bundle.index, bundle.entry(), bundle.checkpoint)
        except (QwardError, OSError):
            # The core died under it (or refused while it restarts): nothing was acknowledged.
            with acks.lock:
                acks.refused += 1
            stop.wait(0.05)


@pytest.mark.slow
def test_three_cores_killed_100_times_lose_no_acknowledged_run(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = tmp_path / "log-identity.json"
    made = subprocess.run(
        [sys.executable, "-m", "qward", "cluster", "log-identity", "--out", str(identity)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    url = postgres_server.url(f"crash_cores_{os.getpid()}")
    monkeypatch.setenv("QWARD_LOG_DATABASE", url)
    monkeypatch.setenv("QWARD_LOG_IDENTITY", str(identity))
    monkeypatch.setenv("QWARD_LOG_LEASE_SECONDS", "1")

    def start(n: int) -> CoreProcess:
        monkeypatch.setenv("QWARD_CORE_ID", f"core-{n}")
        return CoreProcess.start(tmp_path / f"core-{n}")

    cores = [start(n) for n in range(_CORES)]
    models = []
    for core in cores:
        with core.client() as connection:
            sdk = Client(connection, trust=connection.trust())
            models.append(sdk.register(example_bytes("iris-mlp.onnx"), name="iris").model_sha256)
    acks, stop = _Acks(), threading.Event()
    drivers = [
        threading.Thread(target=_drive, args=(core.state_dir, model, acks, stop))
        for core, model in zip(cores, models, strict=True)
        for _ in range(_CLIENTS)
    ]
    for driver in drivers:
        driver.start()
    rng = random.Random(100)
    halfway = 0
    try:
        for n in range(ROUNDS):
            if n == ROUNDS // 2:
                halfway = len(acks.entries)
            time.sleep(rng.uniform(0.1, 0.8))
            victim = rng.randrange(_CORES)
            os.kill(cores[victim].pid, signal.SIGKILL)
            cores[victim].stop()
            cores[victim] = start(victim)
    finally:
        stop.set()
        for driver in drivers:
            driver.join(timeout=60)
        for core in cores:
            core.stop()
    assert len(acks.entries) > 2 * ROUNDS, f"only {len(acks.entries)} runs were acknowledged"
    # The cluster kept serving through the crashes, not only before the first ones.
    assert len(acks.entries) - halfway > ROUNDS, "runs stopped being acknowledged"
    with psycopg.connect(url) as db:
        for index, entry in acks.entries.items():
            row = db.execute("SELECT data FROM entries WHERE idx = %s", (index,)).fetchone()
            assert row is not None and bytes(row[0]) == entry, f"acknowledged entry {index} lost"
    # The final audit, then every checkpoint a client was given against the final tree.
    audit = subprocess.run(
        [sys.executable, "-m", "qward", "log", "verify", "--state-dir", str(tmp_path / "core-0")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert audit.returncode == 0, audit.stderr
    from qward.tlog.pg_store import PostgresLogStore

    with PostgresLogStore.open(url) as store:
        final = note_checkpoint(store.latest_checkpoint() or b"")
        for note in acks.checkpoints:
            old = note_checkpoint(note)
            merkle.verify_consistency(
                old_size=old.size,
                new_size=final.size,
                old_root=old.root_hash,
                new_root=final.root_hash,
                proof=store.consistency_proof(old.size, final.size),
            )
