"""The baseline for bench_serving.py: a plain, unsecured FastAPI + ONNX Runtime V2 infer endpoint.

    python bench/plain_server.py MODEL.onnx PORT

No sealing, no sandbox, no receipt, no log, no auth: what a team would write without qward.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI

_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


def create_app(model_path: str) -> FastAPI:
    """A single-model V2-style JSON infer endpoint."""
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, request: dict[str, Any]) -> dict[str, Any]:
        feed = {
            i["name"]: np.asarray(i["data"], dtype=_TYPES[i["datatype"]]).reshape(i["shape"])
            for i in request["inputs"]
        }
        values = session.run(names, feed)
        return {
            "model_name": name,
            "outputs": [
                {"name": n, "shape": list(v.shape), "data": v.reshape(-1).tolist()}
                for n, v in zip(names, values, strict=True)
            ],
        }

    return app


if __name__ == "__main__":
    uvicorn.run(
        create_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning"
    )
