"""Issue 10.5: outputs over the limit are refused by the worker and by the supervisor; a looping
model is killed at the deadline and the next request works; a memory bomb is contained."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from malicious import (
    amplification_model,
    constant_memory_bomb_model,
    huge_declared_input_model,
    loop_model,
)

from qward.errors import InputError, QwardError, RuntimeFailure
from qward.protected.models import ModelRegistry
from qward.runtime import supervisor
from qward.runtime.supervisor import WorkerPolicy, WorkerProcess
from qward.tensors import Tensor

MIB = 1024 * 1024


def _start(model: bytes, policy: WorkerPolicy) -> WorkerProcess:
    return WorkerProcess.start(
        model=model, model_sha256=hashlib.sha256(model).hexdigest(), policy=policy
    )


def _amplify(elements: int) -> tuple[Tensor, ...]:
    return (
        Tensor.from_numpy("X", np.ones(1, np.float32)),
        Tensor.from_numpy("shape", np.array([elements], np.int64)),
    )


def test_output_amplification_is_refused_by_the_worker_naming_the_limit() -> None:
    with _start(amplification_model(), WorkerPolicy(max_output_bytes=MIB)) as worker:
        with pytest.raises(InputError, match=f"over the limit of {MIB} bytes"):
            worker.run(_amplify(MIB), seed=1)  # 4 MiB of float32 asked by 17 input bytes
        assert worker.alive, "a refused output must not cost the worker"
        (out,) = worker.run(_amplify(4), seed=1)
        assert out.to_numpy().tolist() == [1.0] * 4


def test_output_amplification_is_refused_by_the_supervisor_on_the_announced_length() -> None:
    # A reply frame announcing a body over the limit: refused before any byte of it is read.
    frame = (2).to_bytes(4, "big") + (10 * MIB).to_bytes(8, "big") + b"{}"
    read_end, write_end = os.pipe()
    os.write(write_end, frame)
    with os.fdopen(read_end, "rb") as stream, pytest.raises(supervisor._OutputTooLargeError):
        supervisor._read_reply(stream, 5.0, MIB)
    os.close(write_end)


def test_loop_model_is_killed_at_the_deadline_and_the_next_request_works(tmp_path: Path) -> None:
    model = loop_model()
    digest = hashlib.sha256(model).hexdigest()
    registry = ModelRegistry(tmp_path / "models", workers_per_model=1)
    try:
        entry = registry.add(model_sha256=digest, sealed=model, name="loop")
        start = Tensor.from_numpy("start", np.zeros(1, np.float32))

        def run(trips: int, timeout: float) -> tuple[Tensor, ...]:
            with registry.borrow(entry, lambda sealed: sealed) as worker:
                trip = Tensor.from_numpy("M", np.array(trips, np.int64))
                return worker.run((trip, start), seed=1, timeout=timeout)

        with pytest.raises(RuntimeFailure, match="did not answer"):
            run(2**62, 1.0)
        (out,) = run(3, 30.0)
        assert out.to_numpy().tolist() == [3.0]
    finally:
        registry.close()


def test_constant_memory_bomb_is_contained() -> None:
    # ONNX Runtime may fold the constant while loading or fail on the first run; either way the
    # worker's address-space cap holds and the error is a QwardError, not a crash of the caller.
    policy = WorkerPolicy(memory_limit=512 * MIB)
    try:
        worker = _start(constant_memory_bomb_model(), policy)
    except QwardError:
        return
    with worker, pytest.raises(QwardError):
        worker.run((Tensor.from_numpy("X", np.ones(1, np.float32)),), seed=1)


def test_input_declared_over_the_memory_limit_is_refused_before_allocation() -> None:
    with pytest.raises(InputError, match="over the worker memory limit"):
        _start(huge_declared_input_model(), WorkerPolicy())
