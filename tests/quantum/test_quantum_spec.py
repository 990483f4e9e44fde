"""The ``qward/circuit/v1`` parser: the bundled example parses; adversarial specs fail with an
error naming the field; the parser never fails with anything but ``FormatError``."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.encoding import canonical_json
from qward.errors import FormatError
from qward.runtime.circuit_spec import is_circuit_spec, parse_circuit_spec

from conftest import example_bytes

EXAMPLE = example_bytes("iris-vqc.circuit.json")


def _doc() -> dict[str, Any]:
    return dict(json.loads(EXAMPLE))


def _mutated(change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = copy.deepcopy(_doc())
    change(doc)
    return canonical_json(doc)


def test_bundled_example_parses_and_describes_its_tensors() -> None:
    spec = parse_circuit_spec(EXAMPLE)
    assert (spec.device, spec.wires, spec.shots, spec.features) == ("default.qubit", 4, 1000, 4)
    assert spec.weights["layers"].shape == (2, 4, 3)
    assert not spec.weights["layers"].flags.writeable
    assert spec.describe_inputs() == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert spec.describe_outputs() == [
        {"name": "scores", "datatype": "FP64", "shape": [-1, 3]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ]


def test_circuit_and_onnx_bytes_are_told_apart() -> None:
    assert is_circuit_spec(EXAMPLE)
    assert not is_circuit_spec(example_bytes("iris-mlp.onnx"))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = doc
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value

    return change


def _append_op(op: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["operations"].append(op)


ONE = (1.0).hex()
ADVERSARIAL = [
    (_set("format", "qward/circuit/v2"), "format: must be 'qward/circuit/v1'"),
    (_set("device", "qiskit.aer"), "device: must be one of default.qubit, lightning.qubit"),
    (_set("wires", 21), "wires: must be an integer from 1 to 20, got 21"),
    (_set("wires", 0), "wires: must be an integer from 1 to 20"),
    (_set("wires", True), "wires: must be an integer"),
    (_set("shots", 0), "shots: must be an integer from 1 to 100000"),
    (_set("shots", 10**9), "shots: must be an integer from 1 to 100000"),
    (_set("exec", "import os"), "$: unknown field exec"),
    (_set("input/datatype", "INT64"), "input.datatype"),
    (_set("input/features", 0), "input.features"),
    (
        _append_op({"op": "Toffoli", "wires": [0, 1, 2]}),
        "operations[2].op: unknown gate 'Toffoli'",
    ),
    (_append_op({"op": "__import__", "wires": [0]}), "operations[2].op: unknown gate"),
    (_append_op({"op": "Hadamard", "wires": [4]}), "operations[2].wires[0]: must be an integer"),
    (_append_op({"op": "Hadamard", "wires": [-1]}), "operations[2].wires[0]"),
    (_append_op({"op": "CNOT", "wires": [1, 1]}), "operations[2].wires: wires must be distinct"),
    (_append_op({"op": "CNOT", "wires": [0]}), "operations[2].wires: needs exactly 2 wire(s)"),
    (_append_op({"op": "RX", "wires": [0], "params": []}), "operations[2].params: RX takes"),
    (
        _append_op({"op": "RX", "wires": [0], "params": [{"input": 4}]}),
        "operations[2].params[0].input: must be an integer from 0 to 3",
    ),
    (
        _append_op(
            {"op": "RX", "wires": [0], "params": [{"weight": "layers", "index": [2, 0, 0]}]}
        ),
        "operations[2].params[0].index[0]",
    ),
    (
        _append_op({"op": "RX", "wires": [0], "params": [{"weight": "nope", "index": [0]}]}),
        "operations[2].params[0].weight: no weight array named 'nope'",
    ),
    (
        _append_op({"op": "RX", "wires": [0], "params": [{"constant": "1.5"}]}),
        "operations[2].params[0].constant: must be a finite float written as float.hex()",
    ),
    (
        _append_op({"op": "RX", "wires": [0], "params": [{"constant": "nan"}]}),
        "operations[2].params[0].constant",
    ),
    (
        _append_op({"op": "RX", "wires": [0], "params": [{"constant": "0x1p+0"}]}),
        f"canonical spelling '{ONE}'",
    ),
    (_append_op({"op": "RX", "wires": [0], "params": [{"code": "x"}]}), "operations[2].params[0]"),
    (_set("weights/layers", [[[ONE, ONE]] * 4] * 2), "StronglyEntanglingLayers on 4 wires needs"),
    (_set("weights/layers", [[ONE, ONE], [ONE]]), "weights.layers: is not rectangular"),
    (
        _set("weights/layers", [[[[ONE]]]]),
        "weights.layers[0][0][0]: must be a non-empty nested list (rank 1 to 3)",
    ),
    (_set("weights/layers", []), "weights.layers: must be a non-empty nested list"),
    (_set("operations/0/rotation", "W"), "operations[0].rotation"),
    (_set("operations/0/features", [0, 1, 2, 3, 0]), "operations[0].features"),
    (_set("operations/1/weights", "missing"), "operations[1].weights: no weight array"),
    (_set("operations", []), "operations: must be a list of 1 to"),
    (_set("measurements/0/type", "state"), "measurements[0].type: must be"),
    (_set("measurements/0/observable", "Hermitian"), "measurements[0].observable"),
    (_set("measurements/0/wires", [0, 9]), "measurements[0].wires[1]"),
    (_set("measurements/0/name", "bad name"), "measurements[0].name"),
    (_set("postprocess/name", "scores"), "output names must be distinct"),
    (_set("postprocess/argmax", "label"), "postprocess.argmax: must name an expval output"),
    (_set("preprocess/scale", [ONE]), "preprocess.scale: must list exactly 4 hex floats"),
]


@pytest.mark.parametrize(("change", "message"), ADVERSARIAL)
def test_adversarial_spec_is_refused_naming_the_field(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(FormatError) as caught:
        parse_circuit_spec(_mutated(change))
    assert message in str(caught.value)
    assert str(caught.value).startswith("circuit spec")


def test_sampling_needs_shots() -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["shots"] = None
        doc["measurements"].append({"name": "s", "type": "sample", "wires": [0]})

    with pytest.raises(FormatError, match=r"measurements\[1\]\.type: sample needs shots"):
        parse_circuit_spec(_mutated(change))


def test_non_canonical_json_and_float_literals_are_refused() -> None:
    with pytest.raises(FormatError, match="not in canonical form"):
        parse_circuit_spec(json.dumps(_doc(), indent=1).encode())
    with pytest.raises(FormatError, match="floating-point number"):
        parse_circuit_spec(EXAMPLE.replace(b'"shots":1000', b'"shots":1000.0'))


@given(value=st.floats(allow_nan=False, allow_infinity=False))
@settings(max_examples=200, deadline=None)
def test_hex_floats_round_trip_exactly(value: float) -> None:
    spec = parse_circuit_spec(_mutated(_set("weights/layers/0/0/0", value.hex())))
    got = float(spec.weights["layers"][0, 0, 0])
    assert got == value and math.copysign(1, got) == math.copysign(1, value)


@given(position=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
@settings(max_examples=300, deadline=None)
def test_any_single_byte_change_parses_or_raises_format_error(position: int, byte: int) -> None:
    data = bytearray(EXAMPLE)
    data[position % len(data)] = byte
    try:
        spec = parse_circuit_spec(bytes(data))
    except FormatError as exc:
        assert str(exc).startswith("circuit spec: ")
        return
    assert 1 <= spec.wires <= 20 and all(m.wires for m in spec.measurements)
