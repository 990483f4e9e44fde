"""Regenerate qward's bundled hybrid quantum-classical example: a variational iris classifier.

Run ``python examples/make_example_circuit.py`` (needs the ``quantum`` and ``examples`` extras).
The classifier is classical feature scaling (each feature mapped onto [0, pi]), an angle embedding
on 4 wires, 2 strongly entangling layers, and the expectation of Pauli-Z on wires 0 to 2 read out
as class scores, with a classical argmax for the label. It is trained for a few Adam steps on
scikit-learn's bundled iris data from a fixed seed, and the trained weights are written, exactly,
into a ``qward/circuit/v1`` spec: ``iris-vqc.circuit.json``, with ``iris-vqc-request.json`` beside
it. The spec is data, not code; qward validates it and runs it in its sandboxed worker.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pennylane as qml  # type: ignore[import-untyped]
from make_example_model import write_iris_request
from pennylane import numpy as pnp  # type: ignore[import-untyped]
from sklearn.datasets import load_iris

from qward.encoding import canonical_json
from qward.runtime.circuit_spec import CIRCUIT_FORMAT, parse_circuit_spec
from qward.runtime.circuits import CircuitModel
from qward.tensors import Tensor

OUT = Path(__file__).resolve().parent.parent / "src" / "qward" / "examples"
WIRES, LAYERS, CLASSES, STEPS, SEED, SHOTS = 4, 2, 3, 60, 7, 1000
# Scores in [-1, 1] are sharpened before the softmax so the loss can push classes apart.
SHARPNESS = 4.0


def _hex(values: Any) -> Any:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        return float(array).hex()
    return [_hex(v) for v in array]


def _train(angles: np.ndarray, labels: np.ndarray) -> np.ndarray:
    device = qml.device("default.qubit", wires=WIRES)

    @qml.qnode(device)
    def scores(x: Any, weights: Any) -> Any:
        qml.AngleEmbedding(x, wires=range(WIRES), rotation="Y")
        qml.StronglyEntanglingLayers(weights, wires=range(WIRES))
        return [qml.expval(qml.PauliZ(w)) for w in range(CLASSES)]

    def loss(weights: Any) -> Any:
        logits = SHARPNESS * pnp.stack(scores(angles, weights), axis=1)
        logits = logits - pnp.max(logits, axis=1, keepdims=True)
        log_p = logits - pnp.log(pnp.sum(pnp.exp(logits), axis=1, keepdims=True))
        return -pnp.mean(log_p[np.arange(len(labels)), labels])

    rng = np.random.default_rng(SEED)
    weights = pnp.array(rng.normal(0, 0.5, size=(LAYERS, WIRES, 3)), requires_grad=True)
    optimiser = qml.AdamOptimizer(stepsize=0.1)
    for step in range(STEPS):
        weights, value = optimiser.step_and_cost(loss, weights)
        if step % 10 == 0:
            print(f"step {step:3d}  loss {float(value):.4f}", file=sys.stderr)
    return np.asarray(weights, dtype=np.float64)


def spec(
    weights: np.ndarray, low: np.ndarray, high: np.ndarray, *, shots: int | None
) -> dict[str, Any]:
    """The ``qward/circuit/v1`` document for trained weights and feature ranges."""
    scale = np.pi / (high - low)
    return {
        "format": CIRCUIT_FORMAT,
        "device": "default.qubit",
        "wires": WIRES,
        "shots": shots,
        "input": {"name": "X", "datatype": "FP32", "features": 4},
        "preprocess": {"scale": _hex(scale), "offset": _hex(-low * scale)},
        "weights": {"layers": _hex(weights)},
        "operations": [
            {
                "op": "AngleEmbedding",
                "wires": [0, 1, 2, 3],
                "features": [0, 1, 2, 3],
                "rotation": "Y",
            },
            {"op": "StronglyEntanglingLayers", "wires": [0, 1, 2, 3], "weights": "layers"},
        ],
        "measurements": [
            {"name": "scores", "type": "expval", "observable": "PauliZ", "wires": [0, 1, 2]}
        ],
        "postprocess": {"argmax": "scores", "name": "label"},
    }


def _accuracy(document: dict[str, Any], features: np.ndarray, labels: np.ndarray) -> float:
    model = CircuitModel(parse_circuit_spec(canonical_json(document)))
    outputs, _ = model.run((Tensor.from_numpy("X", features),), SEED)
    predicted = {t.name: t.to_numpy() for t in outputs}["label"]
    return float(np.mean(predicted == labels))


def build(out_dir: Path = OUT) -> Path:
    """Train, check and write ``iris-vqc.circuit.json`` and a sample request beside it."""
    features, labels = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    low, high = features.min(axis=0).astype(np.float64), features.max(axis=0).astype(np.float64)
    angles = (features.astype(np.float64) - low) * (np.pi / (high - low))
    weights = _train(angles, labels)
    document = spec(weights, low, high, shots=SHOTS)
    analytic = _accuracy(spec(weights, low, high, shots=None), features, labels)
    sampled = _accuracy(document, features, labels)
    print(f"training accuracy: analytic {analytic:.3f}, {SHOTS} shots {sampled:.3f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "iris-vqc.circuit.json"
    path.write_bytes(canonical_json(document))
    write_iris_request(out_dir / "iris-vqc-request.json", features)
    return path


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
