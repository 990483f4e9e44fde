"""The manifests render with the one command the docs give, and the Python assembly the other
tests use when kubectl is missing agrees with it object for object."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from k8s_manifests import (
    KUBERNETES,
    assemble,
    by_key,
    load_documents,
    render,
    resource_files,
    target_id,
    targets,
)

TARGETS = targets()


def test_every_overlay_and_example_is_a_target() -> None:
    names = {target_id(t) for t in TARGETS}
    assert {
        "base",
        "overlays/in-cluster-postgres",
        "overlays/external-postgres",
        "overlays/restricted",
        "examples/kserve",
    } <= names


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_kubectl_kustomize_renders(target: Path) -> None:
    objects = render(target)
    assert objects, f"{target_id(target)} rendered nothing"
    assert all({"apiVersion", "kind", "metadata"} <= set(o) for o in objects)


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_assembly_matches_kustomize(target: Path) -> None:
    rendered, assembled = by_key(render(target)), by_key(assemble(target))
    assert sorted(rendered) == sorted(assembled)
    for key, obj in rendered.items():
        assert assembled[key] == obj, f"{target_id(target)}: {key} differs from kustomize"


@pytest.mark.parametrize("path", resource_files(), ids=lambda p: str(p.relative_to(KUBERNETES)))
def test_every_resource_file_loads(path: Path) -> None:
    documents = load_documents(path)
    assert documents, f"{path} holds no object"
    for document in documents:
        assert {"apiVersion", "kind", "metadata"} <= set(document), path


def test_every_resource_file_is_used() -> None:
    # A file no kustomization lists would be validated here but never deployed.
    listed: set[Path] = set()
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        spec = load_documents(kustomization)[0]
        listed |= {(kustomization.parent / r).resolve() for r in spec.get("resources", [])}
    unused = [p for p in resource_files() if p.resolve() not in listed]
    assert not unused, f"resource files no kustomization uses: {unused}"


def test_one_command_renders_the_default_deployment() -> None:
    # The command docs/kubernetes.md and the README give.
    objects = {
        (o["kind"], o["metadata"]["name"])
        for o in render(KUBERNETES / "overlays" / "in-cluster-postgres")
    }
    assert {
        ("StatefulSet", "qward"),
        ("Service", "qward"),
        ("Service", "qward-cores"),
        ("StatefulSet", "qward-postgres"),
        ("Deployment", "qward-witness-1"),
        ("Deployment", "qward-witness-2"),
        ("Deployment", "qward-witness-3"),
        ("NetworkPolicy", "qward"),
        ("Namespace", "qward"),
    } <= objects


def test_the_documented_commands_name_real_targets() -> None:
    # The render and apply commands in README.md and docs/kubernetes.md point at directories
    # that exist and render (a renamed overlay must not leave a dead command behind).
    root = KUBERNETES.parents[1]
    named = set()
    for doc in (root / "README.md", root / "docs" / "kubernetes.md"):
        named |= set(
            re.findall(
                r"kubectl (?:kustomize|apply -k) (deploy/kubernetes/[\w./-]+)", doc.read_text()
            )
        )
    assert "deploy/kubernetes/overlays/in-cluster-postgres" in named
    assert {root / n for n in named} <= set(TARGETS), named
