"""The KServe example validates against KServe's own CRD schemas (extracted from kserve/kserve,
see data/PROVENANCE), made strict the way the API server's strict field validation is."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from k8s_manifests import KUBERNETES, Obj, assemble

DATA = Path(__file__).parent / "data"
SCHEMAS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime-v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-v1beta1.json",
}


def strict(schema: Any) -> Any:
    """``schema`` with unknown fields refused wherever the CRD does not preserve them."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((DATA / SCHEMAS[(api_version, kind)]).read_text())
    # OpenAPI v3 schemas are JSON Schema draft 4 to 7 in what these CRDs use.
    return jsonschema.Draft7Validator(strict(schema))


def kserve_objects() -> list[Obj]:
    objects = assemble(KUBERNETES / "examples" / "kserve")
    return [o for o in objects if o["apiVersion"].startswith("serving.kserve.io/")]


def errors(obj: Obj) -> list[str]:
    found = validator(obj["apiVersion"], obj["kind"]).iter_errors(obj)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


def test_the_example_has_a_runtime_and_a_service() -> None:
    kinds = sorted(o["kind"] for o in kserve_objects())
    assert kinds == ["InferenceService", "ServingRuntime"]


@pytest.mark.parametrize("obj", kserve_objects(), ids=lambda o: o["kind"])
def test_kserve_objects_validate(obj: Obj) -> None:
    assert errors(obj) == []


def test_the_service_uses_the_runtime() -> None:
    runtime, service = sorted(kserve_objects(), key=lambda o: o["kind"] != "ServingRuntime")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    names = [c["name"] for c in runtime["spec"]["containers"]]
    assert names[0] == "kserve-container", "KServe serves the container named kserve-container"


def test_an_unknown_field_in_a_runtime_container_fails() -> None:
    runtime = next(o for o in kserve_objects() if o["kind"] == "ServingRuntime")
    broken = copy.deepcopy(runtime)
    broken["spec"]["containers"][0]["securityContext"]["privilegd"] = True
    assert any("privilegd" in e for e in errors(broken))


def test_a_wrong_type_in_the_service_fails() -> None:
    service = next(o for o in kserve_objects() if o["kind"] == "InferenceService")
    broken = copy.deepcopy(service)
    broken["spec"]["predictor"]["minReplicas"] = "one"
    assert errors(broken)


def test_a_removed_framework_shortcut_is_refused_not_ignored() -> None:
    # The extract drops spec.predictor.sklearn and friends (PROVENANCE): using one must fail.
    service = next(o for o in kserve_objects() if o["kind"] == "InferenceService")
    broken = copy.deepcopy(service)
    broken["spec"]["predictor"]["sklearn"] = {"storageUri": "pvc://x/"}
    assert any("sklearn" in e for e in errors(broken))


def test_the_extracts_are_real_crd_schemas() -> None:
    for name in SCHEMAS.values():
        schema = json.loads((DATA / name).read_text())
        assert "kserve/kserve" in schema["$comment"]
        assert set(schema["properties"]) >= {"apiVersion", "kind", "metadata", "spec"}
        jsonschema.Draft7Validator.check_schema(schema)
