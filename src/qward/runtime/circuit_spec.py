"""The declarative quantum-circuit model format, ``qward/circuit/v1``, and its strict parser.

A hybrid quantum-classical "model" is data, never code: canonical JSON (``qward.encoding``) naming
a simulator, a wire count, an allow-list of gates and templates whose angles come from input
features, trained weights or constants, and the measurements that become output tensors. Nothing
in a spec is evaluated, imported or called; every field is checked here, and every error names the
field that is wrong. Canonical JSON has no floating-point numbers, so every real number (weights,
constants, feature scaling) is written exactly, as Python's ``float.hex()`` text::

    {"device": "default.qubit", "format": "qward/circuit/v1", "input": {"datatype": "FP32",
     "features": 4, "name": "X"}, "measurements": [{"name": "expval", "observable": "PauliZ",
     "type": "expval", "wires": [0, 1, 2]}], "operations": [{"features": [0, 1, 2, 3],
     "op": "AngleEmbedding", "rotation": "Y", "wires": [0, 1, 2, 3]}, {"op":
     "StronglyEntanglingLayers", "weights": "layers", "wires": [0, 1, 2, 3]}], "shots": null,
     "weights": {"layers": [[["0x1.0000000000000p-1", ...]]]}, "wires": 4}

Optional sections: ``preprocess`` (``scale`` and ``offset`` per feature: the angle fed to the
circuit is ``x * scale + offset``) and ``postprocess`` (``{"argmax": <expval output>, "name":
<label output>}``, a classical read-out of the predicted class).

This module is pure (no PennyLane); ``qward.runtime.circuits`` builds and runs what it describes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from qward.encoding import parse_canonical_json
from qward.errors import FormatError

__all__ = [
    "CIRCUIT_CONTENT_TYPE",
    "CIRCUIT_FORMAT",
    "COMPILED_CIRCUIT_FORMAT",
    "DEVICES",
    "GATES",
    "MAX_BATCH",
    "MAX_SHOTS",
    "MAX_WIRES",
    "CircuitSpec",
    "Measurement",
    "Operation",
    "ParamRef",
    "is_circuit_spec",
    "parse_circuit_spec",
]

CIRCUIT_FORMAT = "qward/circuit/v1"
#: The format of the record a receipt binds: the digest of the compiled tapes and how they ran.
COMPILED_CIRCUIT_FORMAT = "qward/compiled-circuit/v1"
#: The sealed-artifact content type that tells a circuit spec from an ONNX model.
CIRCUIT_CONTENT_TYPE = "application/vnd.qward.circuit+json"
DEVICES = ("default.qubit", "lightning.qubit")
#: Gates taking (number of angles, number of wires).
GATES: dict[str, tuple[int, int]] = {
    "RX": (1, 1),
    "RY": (1, 1),
    "RZ": (1, 1),
    "Rot": (3, 1),
    "Hadamard": (0, 1),
    "CNOT": (0, 2),
    "CZ": (0, 2),
}
TEMPLATES = ("AngleEmbedding", "StronglyEntanglingLayers")
OBSERVABLES = ("PauliX", "PauliY", "PauliZ")
# A state vector of 20 qubits is 16 MiB of complex128; beyond that simulation cost explodes.
MAX_WIRES = 20
MAX_SHOTS = 100_000
MAX_BATCH = 1024
_MAX_OPERATIONS = 10_000
_MAX_MEASUREMENTS = 16
_MAX_FEATURES = 1024
_MAX_WEIGHT_VALUES = 100_000
_MAX_LAYERS = 100
_MAX_PROBS_WIRES = 12
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_TOP = {"format", "device", "wires", "shots", "input", "weights", "operations", "measurements"}
_OPTIONAL_TOP = frozenset({"preprocess", "postprocess"})


@dataclass(frozen=True, kw_only=True)
class ParamRef:
    """Where one gate angle comes from: an input feature, a weight element or a constant."""

    kind: str  # "input" | "weight" | "constant"
    feature: int = 0
    weight: str = ""
    index: tuple[int, ...] = ()
    value: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Operation:
    """One gate or template application."""

    op: str
    wires: tuple[int, ...]
    params: tuple[ParamRef, ...] = ()
    features: tuple[int, ...] = ()
    rotation: str = ""
    weights: str = ""


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One measurement, which becomes the output tensor ``name``."""

    name: str
    type: str  # "expval" | "probs" | "sample"
    wires: tuple[int, ...]
    observable: str = ""


@dataclass(frozen=True, kw_only=True)
class CircuitSpec:
    """A validated ``qward/circuit/v1`` spec."""

    device: str
    wires: int
    shots: int | None
    input_name: str
    input_datatype: str
    features: int
    scale: tuple[float, ...] | None
    offset: tuple[float, ...] | None
    weights: dict[str, np.ndarray[Any, np.dtype[np.float64]]]
    operations: tuple[Operation, ...]
    measurements: tuple[Measurement, ...]
    argmax: tuple[str, str] | None  # (expval output it reads, label output it writes)

    def describe_inputs(self) -> list[dict[str, Any]]:
        """The input as the worker reports it (``-1`` = any batch size)."""
        return [
            {"name": self.input_name, "datatype": self.input_datatype, "shape": [-1, self.features]}
        ]

    def describe_outputs(self) -> list[dict[str, Any]]:
        """The output tensors, in spec order."""
        out = []
        for m in self.measurements:
            if m.type == "expval":
                out.append({"name": m.name, "datatype": "FP64", "shape": [-1, len(m.wires)]})
            elif m.type == "probs":
                out.append({"name": m.name, "datatype": "FP64", "shape": [-1, 2 ** len(m.wires)]})
            else:
                out.append(
                    {"name": m.name, "datatype": "INT64", "shape": [-1, self.shots, len(m.wires)]}
                )
        if self.argmax is not None:
            out.append({"name": self.argmax[1], "datatype": "INT64", "shape": [-1]})
        return out


def is_circuit_spec(model: bytes) -> bool:
    """Whether ``model`` claims to be a circuit spec (JSON). An ONNX protobuf never starts with
    ``{``: that byte would be field 15 with the deprecated group wire type."""
    return model[:1] == b"{"


def _fail(where: str, message: str) -> FormatError:
    return FormatError(f"circuit spec: {where}: {message}")


def _keys(
    doc: object, where: str, required: set[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _fail(where, "must be an object")
    missing = sorted(required - set(doc))
    if missing:
        raise _fail(where, f"missing {', '.join(missing)}")
    extra = sorted(set(doc) - required - set(optional))
    if extra:
        raise _fail(where, f"unknown field {', '.join(extra)}")
    return doc


def _int(value: object, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(where, f"must be an integer from {low} to {high}, got {value!r}")
    return value


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _fail(where, f"must be a name matching {_NAME.pattern}, got {value!r}")
    return value


def _hex_float(value: object, where: str) -> float:
    """An exact real number written as ``float.hex()`` text, in its one canonical spelling."""
    hint = "must be a finite float written as float.hex() text, e.g. '0x1.921fb54442d18p+1'"
    if not isinstance(value, str) or len(value) > 32:
        raise _fail(where, hint)
    try:
        number = float.fromhex(value)
    except (ValueError, OverflowError):
        raise _fail(where, f"{hint}, got {value!r}") from None
    if not math.isfinite(number) or number.hex() != value:
        raise _fail(where, f"{hint} (canonical spelling {number.hex()!r}), got {value!r}")
    return number


def _wires(value: object, where: str, wires: int, count: int | None = None) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(where, "must be a non-empty list of wire numbers")
    got = tuple(_int(w, f"{where}[{i}]", 0, wires - 1) for i, w in enumerate(value))
    if len(set(got)) != len(got):
        raise _fail(where, f"wires must be distinct, got {list(got)}")
    if count is not None and len(got) != count:
        raise _fail(where, f"needs exactly {count} wire(s), got {len(got)}")
    return got


def _array(value: object, where: str, depth: int = 0) -> list[Any]:
    if isinstance(value, str):
        return [_hex_float(value, where)]
    if not isinstance(value, list) or not value or depth >= 3:
        raise _fail(where, "must be a non-empty nested list (rank 1 to 3) of hex floats")
    rows = [_array(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if all(isinstance(v, str) for v in value):
        return [r[0] for r in rows]
    if any(isinstance(v, str) for v in value) or len({np.shape(r) for r in rows}) != 1:
        raise _fail(where, "is not rectangular (every row must have the same shape)")
    return rows


def _weights(doc: object) -> dict[str, np.ndarray[Any, np.dtype[np.float64]]]:
    if not isinstance(doc, dict):
        raise _fail("weights", "must be an object of named arrays")
    out, total = {}, 0
    for key in doc:
        where = f"weights.{key}"
        _name(key, where)
        if not isinstance(doc[key], list):
            raise _fail(where, "must be a nested list of hex floats")
        array = np.array(_array(doc[key], where), dtype=np.float64)
        total += array.size
        if total > _MAX_WEIGHT_VALUES:
            raise _fail("weights", f"more than {_MAX_WEIGHT_VALUES} values in all")
        array.setflags(write=False)
        out[key] = array
    return out


def _param(doc: object, where: str, spec: _Context) -> ParamRef:
    if not isinstance(doc, dict) or (len(doc) != 1 and set(doc) != {"weight", "index"}):
        raise _fail(
            where, 'must be {"input": k}, {"weight": name, "index": [...]} or {"constant": hex}'
        )
    if "input" in doc:
        _keys(doc, where, {"input"})
        feature = _int(doc["input"], f"{where}.input", 0, spec.features - 1)
        return ParamRef(kind="input", feature=feature)
    if "constant" in doc:
        _keys(doc, where, {"constant"})
        return ParamRef(kind="constant", value=_hex_float(doc["constant"], f"{where}.constant"))
    _keys(doc, where, {"weight", "index"})
    name = doc["weight"]
    if name not in spec.weights:
        raise _fail(f"{where}.weight", f"no weight array named {name!r}")
    shape = spec.weights[name].shape
    index = doc["index"]
    if not isinstance(index, list) or len(index) != len(shape):
        raise _fail(f"{where}.index", f"must list {len(shape)} indices into weights.{name}")
    got = tuple(_int(v, f"{where}.index[{i}]", 0, shape[i] - 1) for i, v in enumerate(index))
    return ParamRef(kind="weight", weight=name, index=got)


@dataclass(frozen=True, kw_only=True)
class _Context:
    wires: int
    features: int
    weights: dict[str, np.ndarray[Any, np.dtype[np.float64]]]


def _operation(doc: object, where: str, spec: _Context) -> Operation:
    if not isinstance(doc, dict) or not isinstance(doc.get("op"), str):
        raise _fail(where, 'must be an object with an "op" name')
    op = doc["op"]
    if op in GATES:
        angles, count = GATES[op]
        _keys(doc, where, {"op", "wires"} | ({"params"} if angles else set()))
        wires = _wires(doc["wires"], f"{where}.wires", spec.wires, count)
        params = doc.get("params", [])
        if not isinstance(params, list) or len(params) != angles:
            raise _fail(f"{where}.params", f"{op} takes exactly {angles} angle(s)")
        refs = tuple(_param(p, f"{where}.params[{i}]", spec) for i, p in enumerate(params))
        return Operation(op=op, wires=wires, params=refs)
    if op == "AngleEmbedding":
        _keys(doc, where, {"op", "wires", "features", "rotation"})
        wires = _wires(doc["wires"], f"{where}.wires", spec.wires)
        feats = doc["features"]
        if not isinstance(feats, list) or not 0 < len(feats) <= len(wires):
            raise _fail(f"{where}.features", f"must list 1 to {len(wires)} feature indices")
        got = tuple(
            _int(f, f"{where}.features[{i}]", 0, spec.features - 1) for i, f in enumerate(feats)
        )
        if doc["rotation"] not in ("X", "Y", "Z"):
            raise _fail(f"{where}.rotation", f'must be "X", "Y" or "Z", got {doc["rotation"]!r}')
        return Operation(op=op, wires=wires, features=got, rotation=doc["rotation"])
    if op == "StronglyEntanglingLayers":
        _keys(doc, where, {"op", "wires", "weights"})
        wires = _wires(doc["wires"], f"{where}.wires", spec.wires)
        name = doc["weights"]
        if name not in spec.weights:
            raise _fail(f"{where}.weights", f"no weight array named {name!r}")
        shape = spec.weights[name].shape
        if len(shape) != 3 or shape[1:] != (len(wires), 3) or shape[0] > _MAX_LAYERS:
            raise _fail(
                f"{where}.weights",
                f"weights.{name} has shape {list(shape)}; StronglyEntanglingLayers on "
                f"{len(wires)} wires needs [layers <= {_MAX_LAYERS}, {len(wires)}, 3]",
            )
        return Operation(op=op, wires=wires, weights=name)
    allowed = ", ".join([*GATES, *TEMPLATES])
    raise _fail(f"{where}.op", f"unknown gate {op!r} (allowed: {allowed})")


def _measurement(doc: object, where: str, wires: int, shots: int | None) -> Measurement:
    if not isinstance(doc, dict):
        raise _fail(where, "must be an object")
    kind = doc.get("type")
    if kind == "expval":
        _keys(doc, where, {"name", "type", "wires", "observable"})
        if doc["observable"] not in OBSERVABLES:
            raise _fail(f"{where}.observable", f"must be one of {', '.join(OBSERVABLES)}")
    elif kind in ("probs", "sample"):
        _keys(doc, where, {"name", "type", "wires"})
        if kind == "sample" and shots is None:
            raise _fail(f"{where}.type", "sample needs shots (shots is null: analytic mode)")
    else:
        raise _fail(f"{where}.type", f'must be "expval", "probs" or "sample", got {kind!r}')
    got = _wires(doc["wires"], f"{where}.wires", wires)
    if kind == "probs" and len(got) > _MAX_PROBS_WIRES:
        raise _fail(f"{where}.wires", f"probs over at most {_MAX_PROBS_WIRES} wires")
    return Measurement(
        name=_name(doc["name"], f"{where}.name"),
        type=str(kind),
        wires=got,
        observable=str(doc.get("observable", "")),
    )


def _input(doc: object) -> tuple[str, str, int]:
    _keys(doc, "input", {"name", "datatype", "features"})
    assert isinstance(doc, dict)
    if doc["datatype"] not in ("FP32", "FP64"):
        raise _fail("input.datatype", f'must be "FP32" or "FP64", got {doc["datatype"]!r}')
    return (
        _name(doc["name"], "input.name"),
        doc["datatype"],
        _int(doc["features"], "input.features", 1, _MAX_FEATURES),
    )


def _affine(doc: object, features: int) -> tuple[tuple[float, ...] | None, ...]:
    if doc is None:
        return None, None
    _keys(doc, "preprocess", {"scale", "offset"})
    assert isinstance(doc, dict)
    out = []
    for key in ("scale", "offset"):
        values = doc[key]
        if not isinstance(values, list) or len(values) != features:
            raise _fail(f"preprocess.{key}", f"must list exactly {features} hex floats")
        out.append(tuple(_hex_float(v, f"preprocess.{key}[{i}]") for i, v in enumerate(values)))
    return tuple(out)


def _argmax(doc: object, measurements: tuple[Measurement, ...]) -> tuple[str, str] | None:
    if doc is None:
        return None
    _keys(doc, "postprocess", {"argmax", "name"})
    assert isinstance(doc, dict)
    expvals = [m.name for m in measurements if m.type == "expval"]
    if doc["argmax"] not in expvals:
        raise _fail("postprocess.argmax", f"must name an expval output ({', '.join(expvals)})")
    return str(doc["argmax"]), _name(doc["name"], "postprocess.name")


def parse_circuit_spec(data: bytes) -> CircuitSpec:
    """Parse and validate a spec; ``FormatError`` names the first field that is wrong."""
    doc = _keys(parse_canonical_json(data, what="circuit spec"), "$", _TOP, _OPTIONAL_TOP)
    if doc["format"] != CIRCUIT_FORMAT:
        raise _fail("format", f"must be {CIRCUIT_FORMAT!r}, got {doc['format']!r}")
    if doc["device"] not in DEVICES:
        raise _fail("device", f"must be one of {', '.join(DEVICES)}, got {doc['device']!r}")
    wires = _int(doc["wires"], "wires", 1, MAX_WIRES)
    shots = None if doc["shots"] is None else _int(doc["shots"], "shots", 1, MAX_SHOTS)
    name, datatype, features = _input(doc["input"])
    scale, offset = _affine(doc.get("preprocess"), features)
    context = _Context(wires=wires, features=features, weights=_weights(doc["weights"]))
    ops = doc["operations"]
    if not isinstance(ops, list) or not 0 < len(ops) <= _MAX_OPERATIONS:
        raise _fail("operations", f"must be a list of 1 to {_MAX_OPERATIONS} operations")
    operations = tuple(_operation(o, f"operations[{i}]", context) for i, o in enumerate(ops))
    meas = doc["measurements"]
    if not isinstance(meas, list) or not 0 < len(meas) <= _MAX_MEASUREMENTS:
        raise _fail("measurements", f"must be a list of 1 to {_MAX_MEASUREMENTS} measurements")
    measurements = tuple(
        _measurement(m, f"measurements[{i}]", wires, shots) for i, m in enumerate(meas)
    )
    argmax = _argmax(doc.get("postprocess"), measurements)
    names = [m.name for m in measurements] + ([argmax[1]] if argmax else [])
    if len(set(names)) != len(names):
        raise _fail("measurements", f"output names must be distinct, got {names}")
    return CircuitSpec(
        device=doc["device"],
        wires=wires,
        shots=shots,
        input_name=name,
        input_datatype=datatype,
        features=features,
        scale=scale,
        offset=offset,
        weights=context.weights,
        operations=operations,
        measurements=measurements,
        argmax=argmax,
    )
