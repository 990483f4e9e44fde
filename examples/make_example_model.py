"""Regenerate qward's bundled example model: an iris classifier converted with skl2onnx.

Run ``python examples/make_example_model.py`` (needs the ``examples`` extra). The model is a small
multilayer perceptron trained on scikit-learn's bundled iris data with a fixed random state, and
exported with ``zipmap=False`` so both outputs are plain tensors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

OUT = Path(__file__).resolve().parent.parent / "src" / "qward" / "examples"


def write_iris_request(path: Path, features: np.ndarray) -> None:
    """A V2 request of three iris flowers (one per class), seed 42, as the examples ship it."""
    request = {
        "inputs": [
            {
                "name": "X",
                "datatype": "FP32",
                "shape": [3, 4],
                "data": features[[0, 60, 120]].reshape(-1).tolist(),
            }
        ],
        "parameters": {"seed": 42},
    }
    path.write_text(json.dumps(request, indent=2) + "\n")


def build(out_dir: Path = OUT) -> Path:
    """Train, convert and write ``iris-mlp.onnx`` and a sample request beside it."""
    features, labels = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    model = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=2000, random_state=7)
    )
    model.fit(features, labels)
    onnx_model = to_onnx(
        model, features[:1], options={id(model): {"zipmap": False}}, target_opset=17
    )
    onnx_model.doc_string = "qward example: iris MLP classifier (scikit-learn, skl2onnx)"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "iris-mlp.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    write_iris_request(out_dir / "iris-request.json", features)
    return path


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
