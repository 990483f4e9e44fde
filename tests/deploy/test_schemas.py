"""Every built-in Kubernetes object validates against the Kubernetes JSON schemas (the
``kubernetes-validate`` package bundles them; offline), strictly: an unknown field fails."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
from k8s_manifests import (
    KUBERNETES,
    Obj,
    assemble,
    load_documents,
    resource_files,
    target_id,
    targets,
)

#: The Kubernetes version the manifests are written for (docs/kubernetes.md says so too).
KUBERNETES_VERSION = "1.34.0"
_KSERVE = "serving.kserve.io/"


def validate(obj: Obj) -> None:
    """Raise kubernetes_validate's ValidationError when ``obj`` breaks the schema."""
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def builtin(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if not o["apiVersion"].startswith(_KSERVE)]


@pytest.mark.parametrize("target", targets(), ids=target_id)
def test_assembled_objects_validate(target: Path) -> None:
    objects = builtin(assemble(target))
    for obj in objects:
        validate(obj)


@pytest.mark.parametrize("path", resource_files(), ids=lambda p: str(p.relative_to(KUBERNETES)))
def test_resource_files_validate(path: Path) -> None:
    for obj in builtin(load_documents(path)):
        validate(obj)


def _statefulset() -> Obj:
    objects = assemble(KUBERNETES / "overlays" / "in-cluster-postgres")
    return next(
        o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "qward"
    )


def test_an_unknown_field_fails() -> None:
    sts = _statefulset()
    validate(sts)
    public = sts["spec"]["template"]["spec"]["containers"][1]
    # A misspelling that a lenient validator would drop, leaving the container privileged-capable.
    public["securityContext"]["allowPrivilegeEscalaton"] = False
    with pytest.raises(kubernetes_validate.ValidationError, match="allowPrivilegeEscalaton"):
        validate(sts)


def test_a_wrong_type_fails() -> None:
    sts = copy.deepcopy(_statefulset())
    sts["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(sts)


def test_a_missing_required_field_fails() -> None:
    sts = _statefulset()
    del sts["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(kubernetes_validate.ValidationError, match="name"):
        validate(sts)
