"""Circuit execution in-process: physics known answers, the compiled-circuit serialisation, fresh
seeded devices, and how receipts check the compiled-circuit record."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pennylane")

from qward.encoding import canonical_json
from qward.errors import FormatError, InputError
from qward.receipts.circuit import check_circuit_record, circuit_differences
from qward.receipts.replay_verdict import BITWISE, MISMATCH, judge
from qward.runtime.circuit_spec import parse_circuit_spec
from qward.runtime.circuits import CircuitModel
from qward.tensors import Tensor, tensors_digest

DEVICES = ["default.qubit", "lightning.qubit"]


def rx_spec(*, device: str = "default.qubit", shots: int | None = None) -> dict[str, Any]:
    """One wire: RX(x) then <Z> (and samples when there are shots)."""
    measurements: list[dict[str, Any]] = [
        {"name": "z", "type": "expval", "observable": "PauliZ", "wires": [0]}
    ]
    if shots:
        measurements.append({"name": "bits", "type": "sample", "wires": [0]})
    return {
        "format": "qward/circuit/v1",
        "device": device,
        "wires": 1,
        "shots": shots,
        "input": {"name": "x", "datatype": "FP64", "features": 1},
        "weights": {},
        "operations": [{"op": "RX", "wires": [0], "params": [{"input": 0}]}],
        "measurements": measurements,
    }


def model(doc: dict[str, Any]) -> CircuitModel:
    return CircuitModel(parse_circuit_spec(canonical_json(doc)))


def column(values: list[float]) -> tuple[Tensor, ...]:
    return (Tensor.from_numpy("x", np.array(values, dtype=np.float64).reshape(-1, 1)),)


@pytest.mark.parametrize("device", DEVICES)
def test_rx_expectation_is_cos_theta(device: str) -> None:
    # Known answer: <0| RX(t)^dagger Z RX(t) |0> = cos(t).
    angles = [0.0, math.pi / 3, math.pi / 2, 2.0, math.pi]
    outputs, record = model(rx_spec(device=device)).run(column(angles), seed=0)
    (z,) = outputs
    np.testing.assert_allclose(z.to_numpy()[:, 0], np.cos(angles), atol=1e-12)
    assert record["executions"] == len(angles) and record["shots"] is None


def test_compiled_circuit_serialisation_known_answer() -> None:
    # Written by hand from the spec: one tape, RX with the exact input angle (float.hex of 0.5),
    # <Z> on wire 0, no shots. The digest is SHA-256 over these exact bytes.
    expected = (
        b'{"device":"default.qubit","format":"qward/compiled-circuit/v1","shots":null,'
        b'"tapes":[{"measurements":[["ExpectationMP",[0],"PauliZ"]],'
        b'"operations":[["RX",[0],["0x1.0000000000000p-1"]]]}],"wires":1}'
    )
    _, record = model(rx_spec()).run(column([0.5]), seed=0)
    assert record["sha256"] == hashlib.sha256(expected).hexdigest()


@pytest.mark.parametrize("device", DEVICES)
def test_fresh_seeded_device_per_request(device: str) -> None:
    circuit = model(rx_spec(device=device, shots=200))
    x = column([math.pi / 2, 1.0])
    first, record_1 = circuit.run(x, seed=1)
    other, record_2 = circuit.run(x, seed=2)
    again, record_1_again = circuit.run(x, seed=1)
    # No RNG position carries over: the same seed after another request gives the same bytes.
    assert again == first and record_1_again == record_1
    assert other != first
    assert record_2["seed"] == 2 and record_2["sha256"] == record_1["sha256"]
    bits = {t.name: t.to_numpy() for t in first}["bits"]
    assert bits.shape == (2, 200, 1) and set(np.unique(bits)) <= {0, 1}


def test_input_is_checked_against_the_spec() -> None:
    circuit = model(rx_spec())
    with pytest.raises(InputError, match="must be FP64"):
        circuit.run((Tensor.from_numpy("x", np.zeros((1, 1), dtype=np.float32)),), seed=0)
    with pytest.raises(InputError, match=r"shape \[rows, 1\]"):
        circuit.run((Tensor.from_numpy("x", np.zeros((1, 2))),), seed=0)
    with pytest.raises(InputError, match="NaN or infinity"):
        circuit.run(column([float("nan")]), seed=0)


def _record() -> dict[str, Any]:
    _, record = model(rx_spec(shots=10)).run(column([0.25]), seed=9)
    return record


def test_circuit_record_is_checked_strictly() -> None:
    record = _record()
    check_circuit_record(record, seed=9)
    with pytest.raises(FormatError, match="differs from the receipt's seed"):
        check_circuit_record(record, seed=10)
    for key, value in [("sha256", "00"), ("shots", 0), ("device", "x"), ("executions", 0)]:
        with pytest.raises(FormatError, match=f"runtime.circuit.{key}"):
            check_circuit_record({**record, key: value}, seed=9)
    with pytest.raises(FormatError, match="must hold exactly"):
        check_circuit_record({**record, "extra": 1}, seed=9)


def test_replay_of_an_altered_circuit_is_a_mismatch_even_with_identical_outputs() -> None:
    x = column([0.25])
    outputs, record = model(rx_spec()).run(x, seed=3)
    altered = rx_spec()
    altered["operations"].append({"op": "RZ", "wires": [0], "params": [{"constant": "0x0.0p+0"}]})
    altered_outputs, altered_record = model(altered).run(x, seed=3)
    # RZ(0) is the identity, so the outputs agree to the bit; only the circuit differs.
    assert altered_outputs == outputs
    body = {"runtime": {"circuit": record}, "output": {"sha256": tensors_digest(outputs)}}
    same = judge(body=body, replay_runtime={"circuit": record}, replay_outputs=outputs)
    assert same.verdict == BITWISE
    verdict = judge(body=body, replay_runtime={"circuit": altered_record}, replay_outputs=outputs)
    assert verdict.verdict == MISMATCH
    assert "compiled circuit differs" in verdict.detail and "sha256" in verdict.detail
    assert circuit_differences(record, None) == ["the replay ran no circuit"]
