"""Extract the openAPIV3Schemas the KServe example is validated against from KServe's CRDs.

Run from a checkout of github.com/kserve/kserve (the commit named in PROVENANCE):

    python tests/deploy/data/extract_kserve_schemas.py KSERVE_CHECKOUT tests/deploy/data

Only schema data is taken, never code. The InferenceService schema is trimmed to what the example
uses (the predictor's generic ``model`` form and its pod fields); what was removed is listed in
the output's ``$comment`` and in PROVENANCE, so a manifest using a removed field fails validation
instead of passing unchecked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

_CRDS = {
    "servingruntime-v1alpha1.json": (
        "config/crd/full/serving.kserve.io_servingruntimes.yaml",
        "v1alpha1",
        {"spec": ["workerSpec"]},
    ),
    "inferenceservice-v1beta1.json": (
        "config/crd/full/serving.kserve.io_inferenceservices.yaml",
        "v1beta1",
        {
            "": ["status"],
            "spec": ["canary", "explainer", "transformer"],
            "spec.predictor": [
                "workerSpec",
                "huggingface",
                "lightgbm",
                "onnx",
                "paddle",
                "pmml",
                "pytorch",
                "sklearn",
                "tensorflow",
                "triton",
                "xgboost",
            ],
        },
    ),
}


def _node(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    for part in filter(None, dotted.split(".")):
        schema = schema["properties"][part]
    return schema


def extract(checkout: Path, out: Path) -> None:
    """Write one trimmed openAPIV3Schema per CRD version into ``out``."""
    for name, (path, version, removals) in _CRDS.items():
        crd = yaml.safe_load((checkout / path).read_text())
        (schema,) = (
            v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version
        )
        removed = []
        for where, keys in removals.items():
            node = _node(schema, where)
            for key in keys:
                del node["properties"][key]
                removed.append(f"{where}.{key}".lstrip("."))
        schema["$comment"] = (
            f"openAPIV3Schema of {crd['spec']['names']['kind']} {version} from kserve/kserve "
            f"{path}; removed: {', '.join(removed)}"
        )
        text = json.dumps(schema, indent=1, sort_keys=True) + "\n"
        (out / name).write_text(text)


if __name__ == "__main__":
    extract(Path(sys.argv[1]), Path(sys.argv[2]))
