"""Running ``qward/circuit/v1`` specs on PennyLane simulators, deterministically and accountably.

Only the worker imports this module (PennyLane is heavy and optional: the ``quantum`` extra). Per
request it:

1. checks the input tensor against the spec and applies the spec's feature scaling;
2. builds one tape per input row from the allow-listed operations (nothing is looked up by name);
3. compiles the tapes with a FRESH device's own preprocessing (decomposition to native gates),
   the device seeded with the request's seed, so no simulator state or RNG position carries over
   from an earlier request;
4. serialises the compiled tapes canonically (gate names, wires, every parameter as exact
   ``float.hex()`` text, measurements, shots) and hashes them: what is hashed is what runs;
5. executes the compiled tapes on that device, single-threaded, and returns the outputs as tensors
   together with the record a receipt binds (``qward/compiled-circuit/v1``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

import numpy as np
import pennylane as qml  # type: ignore[import-untyped]
from pennylane.tape import QuantumScript  # type: ignore[import-untyped]

from qward.encoding import canonical_json
from qward.errors import InputError, RuntimeFailure
from qward.runtime.circuit_spec import (
    COMPILED_CIRCUIT_FORMAT,
    MAX_BATCH,
    CircuitSpec,
    Measurement,
    Operation,
    ParamRef,
)
from qward.tensors import DATATYPES, MAX_TENSOR_BYTES, Tensor, encode_tensors

__all__ = ["COMPILED_FORMAT", "CircuitModel", "compiled_circuit_bytes", "quantum_versions"]

COMPILED_FORMAT = COMPILED_CIRCUIT_FORMAT

_GATES: dict[str, Any] = {
    "RX": qml.RX,
    "RY": qml.RY,
    "RZ": qml.RZ,
    "Rot": qml.Rot,
    "Hadamard": qml.Hadamard,
    "CNOT": qml.CNOT,
    "CZ": qml.CZ,
}
_OBSERVABLES: dict[str, Any] = {"PauliX": qml.PauliX, "PauliY": qml.PauliY, "PauliZ": qml.PauliZ}


def quantum_versions() -> dict[str, str]:
    """Versions of the quantum libraries that compute an output."""
    out = {"pennylane": importlib.metadata.version("pennylane")}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        out["pennylane_lightning"] = importlib.metadata.version("pennylane_lightning")
    return out


def _device_class(name: str) -> Any:
    if name == "default.qubit":
        return qml.devices.DefaultQubit
    try:
        from pennylane_lightning.lightning_qubit import (  # type: ignore[import-untyped]
            LightningQubit,
        )
    except ImportError:
        raise InputError("device lightning.qubit is not installed in the worker") from None
    if not LightningQubit._CPP_BINARY_AVAILABLE:
        raise InputError("device lightning.qubit has no compiled simulator on this platform")
    return LightningQubit


def _hex(value: Any, where: str) -> Any:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise RuntimeFailure(f"compiled circuit: {where} has a non-real parameter")
    flat = [float(v).hex() for v in array.astype(np.float64).reshape(-1)]
    return flat[0] if array.ndim == 0 else {"shape": list(array.shape), "values": flat}


def compiled_circuit_bytes(
    tapes: list[Any], *, device: str, wires: int, shots: int | None
) -> bytes:
    """The canonical serialisation of compiled tapes that a receipt's circuit digest covers."""
    encoded = []
    for t, tape in enumerate(tapes):
        operations = [
            [op.name, [int(w) for w in op.wires], [_hex(p, f"{op.name}") for p in op.data]]
            for op in tape.operations
        ]
        measurements = [
            [
                type(m).__name__,
                [int(w) for w in m.wires],
                None if getattr(m, "obs", None) is None else m.obs.name,
            ]
            for m in tape.measurements
        ]
        if tape.shots.total_shots != shots:
            raise RuntimeFailure(f"compiled circuit: tape {t} has other shots than the spec")
        encoded.append({"operations": operations, "measurements": measurements})
    return canonical_json(
        {
            "format": COMPILED_FORMAT,
            "device": device,
            "wires": wires,
            "shots": shots,
            "tapes": encoded,
        }
    )


@dataclass(frozen=True, kw_only=True)
class _Row:
    angles: np.ndarray[Any, np.dtype[np.float64]]


class CircuitModel:
    """A validated spec bound to its simulator class; one fresh device per request."""

    def __init__(self, spec: CircuitSpec) -> None:
        self.spec = spec
        self._device = _device_class(spec.device)
        # Read now: package metadata is unreadable once the seccomp filter is in force.
        self.versions = quantum_versions()
        self.inputs = spec.describe_inputs()
        self.outputs = spec.describe_outputs()
        self.weights_sha256 = hashlib.sha256(
            encode_tensors(Tensor.from_numpy(n, a) for n, a in sorted(spec.weights.items()))
        ).hexdigest()

    def profile(self) -> dict[str, Any]:
        """The execution profile as a receipt records it."""
        return {
            "engine": "pennylane",
            "device": self.spec.device,
            "wires": self.spec.wires,
            "shots": self.spec.shots,
            "threads": 1,
            "fresh_device_per_request": True,
            "device_seed": "the request seed",
            "compilation": "the device's own preprocess transforms",
            "batching": "one tape per input row, executed in row order",
        }

    def warm_up(self) -> None:
        """Run the whole path once, so every lazy import and one-time set-up (library loading,
        thread pools) happens before the seccomp filter forbids it."""
        zeros = np.zeros((1, self.spec.features), dtype=DATATYPES[self.spec.input_datatype])
        self.run((Tensor.from_numpy(self.spec.input_name, zeros),), 0)

    def run(
        self, tensors: tuple[Tensor, ...], seed: int
    ) -> tuple[tuple[Tensor, ...], dict[str, Any]]:
        """Execute one request; returns the outputs and the compiled-circuit record."""
        rows = self._rows(tensors)
        device = self._device(wires=self.spec.wires, seed=seed)
        program = device.preprocess_transforms()
        compiled, post = program([self._tape(row) for row in rows])
        serial = compiled_circuit_bytes(
            list(compiled), device=self.spec.device, wires=self.spec.wires, shots=self.spec.shots
        )
        try:
            results = post(device.execute(compiled))
        except Exception as exc:  # the simulator's own errors (memory, numerical) are untyped
            raise RuntimeFailure(f"the simulator failed: {type(exc).__name__}") from None
        record = {
            "format": COMPILED_FORMAT,
            "sha256": hashlib.sha256(serial).hexdigest(),
            "device": self.spec.device,
            "shots": self.spec.shots,
            "seed": seed,
            "executions": len(rows),
            "weights_sha256": self.weights_sha256,
        }
        return self._tensors(results, len(rows)), record

    def _rows(self, tensors: tuple[Tensor, ...]) -> list[_Row]:
        spec = self.spec
        if [t.name for t in tensors] != [spec.input_name]:
            raise InputError(f"circuit expects one input {spec.input_name!r}")
        (tensor,) = tensors
        if tensor.datatype != spec.input_datatype:
            raise InputError(f"input {spec.input_name!r} must be {spec.input_datatype}")
        if len(tensor.shape) != 2 or tensor.shape[1] != spec.features or tensor.shape[0] < 1:
            raise InputError(
                f"input {spec.input_name!r} must have shape [rows, {spec.features}], "
                f"got {list(tensor.shape)}"
            )
        if tensor.shape[0] > MAX_BATCH:
            raise InputError(f"at most {MAX_BATCH} rows per request")
        values = tensor.to_numpy().astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise InputError(f"input {spec.input_name!r} holds a NaN or infinity")
        if spec.scale is not None and spec.offset is not None:
            values = values * np.array(spec.scale) + np.array(spec.offset)
        per_row = sum(m.type == "sample" for m in spec.measurements) * (spec.shots or 0) * 8
        if per_row * spec.wires * len(values) > MAX_TENSOR_BYTES:
            raise InputError("the samples for this many rows would exceed the tensor size limit")
        return [_Row(angles=row) for row in values]

    def _angle(self, ref: ParamRef, row: _Row) -> float:
        if ref.kind == "input":
            return float(row.angles[ref.feature])
        if ref.kind == "weight":
            return float(self.spec.weights[ref.weight][ref.index])
        return ref.value

    def _operation(self, op: Operation, row: _Row) -> Any:
        if op.op == "AngleEmbedding":
            return qml.AngleEmbedding(
                row.angles[list(op.features)], wires=list(op.wires), rotation=op.rotation
            )
        if op.op == "StronglyEntanglingLayers":
            return qml.StronglyEntanglingLayers(self.spec.weights[op.weights], wires=list(op.wires))
        return _GATES[op.op](*(self._angle(p, row) for p in op.params), wires=list(op.wires))

    def _tape(self, row: _Row) -> Any:
        measurements = []
        for m in self.spec.measurements:
            if m.type == "expval":
                measurements += [qml.expval(_OBSERVABLES[m.observable](w)) for w in m.wires]
            elif m.type == "probs":
                measurements.append(qml.probs(wires=list(m.wires)))
            else:
                measurements.append(qml.sample(wires=list(m.wires)))
        ops = [self._operation(op, row) for op in self.spec.operations]
        return QuantumScript(ops, measurements, shots=self.spec.shots)

    def _tensors(self, results: Any, rows: int) -> tuple[Tensor, ...]:
        per_output: dict[str, list[np.ndarray[Any, Any]]] = {}
        for r in range(rows):
            values = results[r] if self._measured() > 1 else (results[r],)
            position = 0
            for m in self.spec.measurements:
                taken, position = _take(m, values, position, self.spec.shots)
                per_output.setdefault(m.name, []).append(taken)
        out = {name: np.stack(rows_) for name, rows_ in per_output.items()}
        if self.spec.argmax is not None:
            source, name = self.spec.argmax
            out[name] = np.argmax(out[source], axis=1).astype(np.int64)
        return tuple(Tensor.from_numpy(name, out[name]) for name in sorted(out))

    def _measured(self) -> int:
        return sum(len(m.wires) if m.type == "expval" else 1 for m in self.spec.measurements)


def _take(
    m: Measurement, values: Any, position: int, shots: int | None
) -> tuple[np.ndarray[Any, Any], int]:
    if m.type == "expval":
        end = position + len(m.wires)
        return np.array([float(v) for v in values[position:end]], dtype=np.float64), end
    value = np.asarray(values[position])
    if m.type == "probs":
        return value.astype(np.float64).reshape(2 ** len(m.wires)), position + 1
    return value.astype(np.int64).reshape(shots or 0, len(m.wires)), position + 1
