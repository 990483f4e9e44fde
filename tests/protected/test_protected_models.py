"""The worker pool: several single-threaded workers per model, identical bytes from each, and a
dead worker replaced without failing later requests."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from qward.protected.models import ModelRegistry

from conftest import example_bytes, iris_inputs

MODEL = example_bytes("iris-mlp.onnx")
DIGEST = hashlib.sha256(MODEL).hexdigest()


def _identity(sealed: bytes) -> bytes:
    # These tests exercise the pool, not sealing: the stored bytes are the model itself.
    return sealed


def test_pool_spreads_requests_and_every_worker_agrees(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, workers_per_model=2)
    entry = registry.add(model_sha256=DIGEST, sealed=MODEL, name="iris")
    inputs, seed = iris_inputs()
    used: list[int] = []

    def run(_: int) -> bytes:
        with registry.borrow(entry, _identity) as worker:
            used.append(worker.pid)
            return b"".join(t.data for t in worker.run(inputs, seed=seed))

    try:
        with ThreadPoolExecutor(4) as pool:
            outputs = set(pool.map(run, range(16)))
        assert len(outputs) == 1  # bit-identical whichever worker ran it
        assert len(set(used)) == 2 and len(entry.pool) == 2
    finally:
        registry.close()


def test_dead_worker_is_replaced(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, workers_per_model=2)
    entry = registry.add(model_sha256=DIGEST, sealed=MODEL, name="iris")
    inputs, seed = iris_inputs()
    try:
        registry.ensure_workers(entry, _identity)
        victim = entry.pool[0].pid
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while entry.pool[0].alive and time.monotonic() < deadline:
            time.sleep(0.01)  # a worker that dies mid-request fails that request; not tested here
        for _ in range(4):
            with registry.borrow(entry, _identity) as worker:
                assert worker.run(inputs, seed=seed)
        pids = {w.pid for w in entry.pool}
        assert victim not in pids and len(pids) == 2
    finally:
        registry.close()
