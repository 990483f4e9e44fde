"""Circuits in the sandboxed worker: same isolation as ONNX, bitwise-stable, fresh seeded devices,
and the same bytes as the circuit computed outside the sandbox."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("pennylane")

from qward.encoding import canonical_json
from qward.errors import InputError
from qward.runtime.circuit_spec import CIRCUIT_CONTENT_TYPE, parse_circuit_spec
from qward.runtime.circuits import CircuitModel
from qward.runtime.supervisor import WorkerProcess
from qward.tensors import Tensor, tensors_from_json

from conftest import example_bytes

EXAMPLE = example_bytes("iris-vqc.circuit.json")


def _start(spec: bytes) -> WorkerProcess:
    return WorkerProcess.start(
        model=spec, model_sha256=hashlib.sha256(spec).hexdigest(), content_type=CIRCUIT_CONTENT_TYPE
    )


def _example_on(device: str) -> bytes:
    doc = json.loads(EXAMPLE)
    doc["device"] = device
    doc["measurements"].append({"name": "bits", "type": "sample", "wires": [0, 3]})
    return canonical_json(doc)


def _request() -> tuple[Tensor, ...]:
    inputs, _ = tensors_from_json(example_bytes("iris-vqc-request.json"))
    return inputs


@pytest.fixture(scope="module")
def onnx_isolation() -> dict[str, object]:
    model = example_bytes("iris-mlp.onnx")
    with WorkerProcess.start(model=model, model_sha256=hashlib.sha256(model).hexdigest()) as w:
        return dict(w.info["isolation"])


@pytest.fixture(scope="module", params=["default.qubit", "lightning.qubit"])
def worker(request: pytest.FixtureRequest) -> Iterator[tuple[bytes, WorkerProcess]]:
    if request.param == "lightning.qubit":
        pytest.importorskip("pennylane_lightning")
    spec = _example_on(request.param)
    with _start(spec) as process:
        yield spec, process


def test_circuit_worker_is_isolated_like_an_onnx_worker(
    worker: tuple[bytes, WorkerProcess], onnx_isolation: dict[str, object]
) -> None:
    info = worker[1].info
    isolation = info["isolation"]
    assert isolation["degraded"] == onnx_isolation["degraded"]
    assert {n: v["enforced"] for n, v in isolation["layers"].items()} == {
        n: v["enforced"]  # type: ignore[index]
        for n, v in onnx_isolation["layers"].items()  # type: ignore[attr-defined]
    }
    assert isolation["probes"] == onnx_isolation["probes"]
    assert info["engine"] == "pennylane"
    assert info["session_options"]["threads"] == 1
    assert info["session_options"]["fresh_device_per_request"] is True
    assert info["libraries"]["pennylane"]


def test_sandboxed_run_is_bitwise_stable_and_matches_in_process(
    worker: tuple[bytes, WorkerProcess],
) -> None:
    spec, process = worker
    inputs = _request()
    first, record = process.run_recorded(inputs, seed=42)
    assert process.run_recorded(inputs, seed=7)[0] != first  # the samples follow the seed
    assert process.run_recorded(inputs, seed=42) == (first, record)  # nothing carried over
    with _start(spec) as other:
        assert other.run_recorded(inputs, seed=42) == (first, record)
    local, local_record = CircuitModel(parse_circuit_spec(spec)).run(inputs, 42)
    assert local == first and {"circuit": local_record} == record
    labels = {t.name: t.to_numpy() for t in first}["label"]
    assert labels.tolist() == [0, 1, 2]


def test_bad_spec_is_refused_at_load_naming_the_field() -> None:
    doc = json.loads(EXAMPLE)
    doc["wires"] = 40
    with pytest.raises(InputError, match="circuit spec: wires: must be an integer from 1 to 20"):
        _start(canonical_json(doc))


def test_wrong_input_is_an_input_error(worker: tuple[bytes, WorkerProcess]) -> None:
    x = (Tensor.from_numpy("X", np.zeros((2, 3), dtype=np.float32)),)
    with pytest.raises(InputError, match=r"shape \[rows, 4\]"):
        worker[1].run(x, seed=0)
    assert worker[1].alive
