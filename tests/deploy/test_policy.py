"""The security invariants of every rendered deployment, and proof that the checker catches each
kind of mistake (a mutated copy of a good deployment must be refused, naming the problem)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
from k8s_manifests import KUBERNETES, Obj, assemble, containers, target_id, targets
from k8s_policy import CORE_SECRETS, flag, role, violations

DEFAULT = KUBERNETES / "overlays" / "in-cluster-postgres"


@pytest.mark.parametrize("target", targets(), ids=target_id)
def test_every_deployment_keeps_the_invariants(target: Path) -> None:
    assert violations(assemble(target)) == []


@pytest.mark.parametrize("target", targets(), ids=target_id)
def test_three_distinct_uids_where_the_core_may_drop(target: Path) -> None:
    for obj in assemble(target):
        for container in containers(obj):
            if role(container) == "core" and flag(container, "--user") is not None:
                assert flag(container, "--user") == "10001:10001"
                assert flag(container, "--worker-user") == "10003:10003"
                assert flag(container, "--api-uid") == "10002"


def test_the_restricted_overlay_runs_nothing_as_root() -> None:
    for obj in assemble(KUBERNETES / "overlays" / "restricted"):
        for container in containers(obj):
            context = container["securityContext"]
            assert context.get("runAsNonRoot") is True, container["name"]
            assert "add" not in context.get("capabilities", {}), container["name"]
            assert flag(container, "--user") is None
    labels = next(
        o for o in assemble(KUBERNETES / "overlays" / "restricted") if o["kind"] == "Namespace"
    )["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_core_secrets_are_referenced_by_the_core_only() -> None:
    # Positive control for the secret rule: the secrets are really there, in the core.
    sts = _get(assemble(DEFAULT), "StatefulSet", "qward")
    spec = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    core = _container(sts, "core")
    mounted = {
        volumes.get(m["name"], {}).get("secret", {}).get("secretName") for m in core["volumeMounts"]
    }
    env = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in core["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert mounted | env >= CORE_SECRETS


# --- adversarial: each mutation of a good deployment must be caught ------------------------------


def _get(objects: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _container(sts: Obj, name: str) -> Obj:
    spec = sts["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec["initContainers"] if c["name"] == name)


def _public_privileged(objects: list[Obj]) -> None:
    _container(_get(objects, "StatefulSet", "qward"), "public")["securityContext"]["privileged"] = (
        True
    )


def _public_mounts_passphrase(objects: list[Obj]) -> None:
    public = _container(_get(objects, "StatefulSet", "qward"), "public")
    public["volumeMounts"].append({"name": "keystore-passphrase", "mountPath": "/x"})


def _public_gets_database_url(objects: list[Obj]) -> None:
    public = _container(_get(objects, "StatefulSet", "qward"), "public")
    public["env"].append(
        {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "qward-log-database", "key": "url"}}}
    )


def _public_gets_log_identity_env(objects: list[Obj]) -> None:
    public = _container(_get(objects, "StatefulSet", "qward"), "public")
    public["env"].append({"name": "QWARD_LOG_IDENTITY", "value": "/x"})


def _public_mounts_state(objects: list[Obj]) -> None:
    public = _container(_get(objects, "StatefulSet", "qward"), "public")
    public["volumeMounts"].append({"name": "state", "mountPath": "/var/lib/qward"})


def _public_as_core_uid(objects: list[Obj]) -> None:
    _container(_get(objects, "StatefulSet", "qward"), "public")["securityContext"]["runAsUser"] = (
        10001
    )


def _public_as_root(objects: list[Obj]) -> None:
    context = _container(_get(objects, "StatefulSet", "qward"), "public")["securityContext"]
    context["runAsUser"], context["runAsNonRoot"] = 0, False


def _workers_as_public_uid(objects: list[Obj]) -> None:
    core = _container(_get(objects, "StatefulSet", "qward"), "core")
    core["args"] = [a.replace("--worker-user=10003", "--worker-user=10002") for a in core["args"]]


def _core_adds_sys_admin(objects: list[Obj]) -> None:
    core = _container(_get(objects, "StatefulSet", "qward"), "core")
    core["securityContext"]["capabilities"]["add"].append("SYS_ADMIN")


def _core_root_without_dropping(objects: list[Obj]) -> None:
    core = _container(_get(objects, "StatefulSet", "qward"), "core")
    core["args"] = [a for a in core["args"] if not a.startswith(("--user=", "--worker-user="))]


def _witness_escalates(objects: list[Obj]) -> None:
    witness = _get(objects, "Deployment", "qward-witness-2")["spec"]["template"]["spec"]
    witness["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True


def _writable_root(objects: list[Obj]) -> None:
    postgres = _get(objects, "StatefulSet", "qward-postgres")["spec"]["template"]["spec"]
    postgres["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False


def _no_limits(objects: list[Obj]) -> None:
    del _container(_get(objects, "StatefulSet", "qward"), "prepare-public")["resources"]["limits"]


def _latest_image(objects: list[Obj]) -> None:
    _container(_get(objects, "StatefulSet", "qward"), "core")["image"] = (
        "ghcr.io/qward/qward:latest"
    )


def _untagged_image(objects: list[Obj]) -> None:
    _container(_get(objects, "StatefulSet", "qward"), "public")["image"] = "ghcr.io/qward/qward"


def _token_mounted(objects: list[Obj]) -> None:
    _get(objects, "StatefulSet", "qward")["spec"]["template"]["spec"][
        "automountServiceAccountToken"
    ] = True


def _service_selects_nothing(objects: list[Obj]) -> None:
    _get(objects, "Service", "qward")["spec"]["selector"]["app.kubernetes.io/component"] = "core"


def _headless_gets_an_ip(objects: list[Obj]) -> None:
    del _get(objects, "Service", "qward-cores")["spec"]["clusterIP"]


def _ingress_on_every_port(objects: list[Obj]) -> None:
    _get(objects, "NetworkPolicy", "qward")["spec"]["ingress"].append({})


def _fsync_off(objects: list[Obj]) -> None:
    postgres = _get(objects, "StatefulSet", "qward-postgres")["spec"]["template"]["spec"]
    postgres["containers"][0]["args"] = ["-c", "fsync=off"]


def _a_secret_shipped(objects: list[Obj]) -> None:
    objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "leak"}})


def _no_readiness(objects: list[Obj]) -> None:
    del _container(_get(objects, "StatefulSet", "qward"), "public")["readinessProbe"]


MUTATIONS: dict[str, tuple[Callable[[list[Obj]], None], str]] = {
    "public privileged": (_public_privileged, "public: privileged"),
    "public mounts the passphrase": (_public_mounts_passphrase, "core's volume keystore"),
    "public gets the database URL": (_public_gets_database_url, "core's environment DB"),
    "public gets the log identity": (_public_gets_log_identity_env, "QWARD_LOG_IDENTITY"),
    "public mounts the state": (_public_mounts_state, "core's volume state"),
    "public as the core's uid": (_public_as_core_uid, "share uid 10001"),
    "public as root": (_public_as_root, "public: not runAsNonRoot"),
    "workers as the public's uid": (_workers_as_public_uid, "workers run as uid 10002"),
    "core adds SYS_ADMIN": (_core_adds_sys_admin, "SYS_ADMIN"),
    "core root without dropping": (_core_root_without_dropping, "core: not runAsNonRoot"),
    "witness escalates": (_witness_escalates, "allowPrivilegeEscalation"),
    "writable root filesystem": (_writable_root, "readOnlyRootFilesystem"),
    "no limits": (_no_limits, "prepare-public: no cpu and memory limits"),
    "latest image": (_latest_image, "is not pinned"),
    "untagged image": (_untagged_image, "is not pinned"),
    "service account token": (_token_mounted, "automountServiceAccountToken"),
    "service selects nothing": (_service_selects_nothing, "Service/qward: selector"),
    "headless gets an IP": (_headless_gets_an_ip, "not headless"),
    "ingress on every port": (_ingress_on_every_port, "open on every port"),
    "fsync off": (_fsync_off, "fsync"),
    "a Secret shipped": (_a_secret_shipped, "a Secret in the manifests"),
    "no readiness probe": (_no_readiness, "readinessProbe"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_a_mutation_is_caught(name: str) -> None:
    objects = copy.deepcopy(assemble(DEFAULT))
    assert violations(objects) == []
    mutate, expected = MUTATIONS[name]
    mutate(objects)
    found = violations(objects)
    assert any(expected in line for line in found), found


def test_a_kserve_mutation_is_caught() -> None:
    objects = assemble(KUBERNETES / "examples" / "kserve")
    runtime = _get(objects, "ServingRuntime", "qward")
    public = next(c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container")
    public["volumeMounts"].append({"name": "keystore-passphrase", "mountPath": "/x"})
    assert any("kserve-container: mounts the core's volume" in v for v in violations(objects))
