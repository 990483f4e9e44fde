"""The pods' own containers, run on this machine as the kubelet would run them.

No cluster is involved. The tests take the StatefulSet and the witness Deployments exactly as
rendered, lay out their volumes the way the kubelet does with ``fsGroup`` (emptyDirs 2777 and
claims 2775 with the pod's group; Secret files behind the ``..data`` link, mode
``defaultMode | 0440``, group fsGroup), run the init containers and then the containers with the
uids, groups, capability bounding sets and ``no_new_privs`` their security contexts give, the log
in the session's real PostgreSQL, and then seal, upload and run the iris model through the
public port. Paths are the manifests' own, moved under a temporary directory; ports are moved to
free ones; ``python`` is this interpreter and the code this checkout.

What they cannot reproduce: the container runtime's seccomp profile (RuntimeDefault) and AppArmor
profile, separate mount namespaces (here every process can name every path, so the test also
checks that file modes alone keep the public server's uid out of the core's state), images, and
per-container ``/tmp``.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from k8s_manifests import KUBERNETES, Obj, assemble
from k8s_policy import pods, role

from qward.public.auth import TokenStore
from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_model
from qward.sdk.core_client import CoreClient
from qward.tlog.witness_policy import Quorum
from qward.witness.keys import create_witness_keys

from conftest import example_bytes, free_port, runtime_usable_by
from postgres_server import PostgresServer

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="running the pods' containers as their own uids needs root"
)

_PASSPHRASE = "pod passphrase 7741"
_CAPS = {"SETGID": 6, "SETUID": 7, "SETPCAP": 8}
_libc = ctypes.CDLL(None, use_errno=True)
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 24, 38
_SOCKET = "/run/qward-socket/core/core.sock"


def _container_limits(keep: frozenset[int]) -> Any:
    """A preexec hook: the capability bounding set and no_new_privs a runtime would set."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())

    def apply() -> None:
        for cap in range(last + 1):
            if cap not in keep:
                _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
        _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)

    return apply


@dataclass
class Pod:
    """A workload's pod laid out under ``root``: volume directories, path and port maps."""

    name: str
    spec: Obj
    root: Path
    volumes: dict[str, Path]
    mounts: dict[str, Path]
    database: str = ""
    ports: dict[int, int] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def local(self, text: str) -> str:
        """``text`` with mount paths (longest first) moved to their volumes, ports to free ones."""
        for mount in sorted(self.mounts, key=len, reverse=True):
            text = text.replace(mount, str(self.mounts[mount]))
        for port, free in self.ports.items():
            text = text.replace(f"--port={port}", f"--port={free}")
        return text.replace("--host=0.0.0.0", "--host=127.0.0.1")

    @property
    def fs_group(self) -> int:
        return int(self.spec["securityContext"]["fsGroup"])

    def log(self, container: str) -> Path:
        return self.root / f"{container}.log"

    def start(self, container: Obj) -> subprocess.Popen[bytes]:
        """Start one container's process as its security context says."""
        context = container["securityContext"]
        keep = frozenset(_CAPS[c] for c in context.get("capabilities", {}).get("add", []))
        with self.log(container["name"]).open("ab") as out:
            proc = subprocess.Popen(
                [self.local(w) for w in container["command"] + container.get("args", [])],
                env=self._environment(container),
                user=context["runAsUser"],
                group=context["runAsGroup"],
                # The kubelet adds the pod's fsGroup to every container's groups.
                extra_groups=[self.fs_group],
                preexec_fn=_container_limits(keep),
                cwd="/",
                stdout=out,
                stderr=out,
            )
        self.procs.append(proc)
        return proc

    def run_init(self) -> None:
        for init in self.spec["initContainers"]:
            code = self.start(init).wait(60)
            assert code == 0, self.log(init["name"]).read_text(errors="replace")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def _environment(self, container: Obj) -> dict[str, str]:
        # The image's PATH, with `python` being this interpreter.
        env = {
            "PATH": f"{self.root / 'bin'}:/usr/bin:/bin",
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
        }
        for item in container.get("env", []):
            source = item.get("valueFrom", {})
            if "fieldRef" in source:
                assert source["fieldRef"]["fieldPath"] == "metadata.name"
                env[item["name"]] = self.name
            elif "secretKeyRef" in source:
                assert source["secretKeyRef"]["name"] == "qward-log-database"
                env[item["name"]] = self.database
            else:
                env[item["name"]] = self.local(item["value"])
        return env


def _write_projected(directory: Path, files: dict[str, bytes], mode: int, gid: int) -> None:
    # The kubelet's atomic writer: files live in a timestamped directory behind ..data.
    data = directory / "..2026_12_04_00_00_00.000000000"
    data.mkdir()
    for name, content in files.items():
        (data / name).write_bytes(content)
        os.chown(data / name, 0, gid)
        os.chmod(data / name, mode)
        (directory / name).symlink_to(Path("..data") / name)
    (directory / "..data").symlink_to(data.name)
    os.chmod(data, 0o755)


def layout(obj: Obj, root: Path, contents: dict[str, dict[str, bytes]], name: str) -> Pod:
    """Lay out ``obj``'s pod under ``root`` as the kubelet would, Secrets from ``contents``."""
    claims = [
        {"name": t["metadata"]["name"], "persistentVolumeClaim": {}}
        for t in obj["spec"].get("volumeClaimTemplates", [])
    ]
    spec = obj["spec"]["template"]["spec"]
    return layout_spec({**spec, "volumes": spec["volumes"] + claims}, root, contents, name)


def layout_spec(spec: Obj, root: Path, contents: dict[str, dict[str, bytes]], name: str) -> Pod:
    """Lay out the pod ``spec`` under ``root`` (see ``layout``)."""
    root.mkdir(mode=0o755)
    (root / "bin").mkdir()
    # Not a symlink: the virtual environment is found from the interpreter's own path.
    (root / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    os.chmod(root / "bin" / "python", 0o755)
    group = spec["securityContext"]["fsGroup"]
    volumes: dict[str, Path] = {}
    for volume in spec["volumes"]:
        path = root / "volumes" / volume["name"]
        path.mkdir(parents=True)
        os.chown(path, 0, group)
        volumes[volume["name"]] = path
        if "emptyDir" in volume:
            os.chmod(path, 0o2777)
        elif "persistentVolumeClaim" in volume:
            os.chmod(path, 0o2775)
        else:
            source = volume.get("secret") or volume.get("configMap")
            assert source is not None, volume
            mode = source["defaultMode"] | (0o440 if "secret" in volume else 0)
            os.chmod(path, 0o2755)
            _write_projected(path, contents.get(volume["name"], {}), mode, group)
    os.chmod(root / "volumes", 0o755)
    mounts: dict[str, Path] = {}
    for container in spec["initContainers"] + spec["containers"]:
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"] != "/tmp":
                target = volumes[mount["name"]]
                assert mounts.setdefault(mount["mountPath"], target) == target, mount
    return Pod(name=name, spec=spec, root=root, volumes=volumes, mounts=mounts)


def _workload(objects: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split()[1]
    raise AssertionError(key)


def _descendants(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found + [d for child in found for d in _descendants(child)]


def _run_as(uid: int, groups: list[int], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        user=uid,
        group=uid,
        extra_groups=groups,
        env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture()
def usable() -> Iterator[None]:
    with ExitStack() as stack:
        for uid in (10001, 10002, 10003, 10004):
            stack.enter_context(runtime_usable_by(uid))
        yield


@pytest.fixture()
def database(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    # The session server's socket directory is private to its user; the core's uid must reach
    # the socket, as it would reach a Service. One schema (one log) per test.
    mode = postgres_server.base.stat().st_mode
    os.chmod(postgres_server.base, mode | 0o001)
    schema = "deploy_pod_" + "".join(c for c in request.node.name if c.isalnum())[-40:]
    try:
        yield postgres_server.url(f"{schema}_{os.getpid()}")
    finally:
        os.chmod(postgres_server.base, mode)


@pytest.fixture()
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="qward-pods-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _replica(
    objects: list[Obj], root: Path, database: str, secrets: Obj, name: str = "qward-0"
) -> Pod:
    pod = layout(_workload(objects, "StatefulSet", "qward"), root, secrets, name)
    pod.database, pod.ports = database, {8000: free_port()}
    return pod


def _start_replica(pod: Pod) -> str:
    """Init containers, the core (until its socket exists), the public server; the base URL."""
    pod.run_init()
    for container in pod.spec["containers"]:
        proc = pod.start(container)
        if role(container) == "core":
            sock = Path(pod.local(_SOCKET))
            deadline = time.monotonic() + 60
            while not sock.exists() and time.monotonic() < deadline:
                assert proc.poll() is None, pod.log("core").read_text(errors="replace")
                time.sleep(0.1)
    url = f"http://127.0.0.1:{pod.ports[8000]}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for proc in pod.procs[-2:]:
            assert proc.poll() is None, pod.log("core").read_text(errors="replace")[-3000:]
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail("the pod did not become ready: " + pod.log("core").read_text()[-3000:])


def _secrets(root: Path) -> tuple[dict[str, dict[str, bytes]], str]:
    tokens = root / "tokens.json"
    token, _ = TokenStore(tokens).create(role="admin", models=())
    return {
        "keystore-passphrase": {"passphrase": _PASSPHRASE.encode() + b"\n"},
        "tokens": {"tokens.json": tokens.read_bytes()},
        "log-identity": {"log-identity.json": _log_identity(root)},
    }, token


def _log_identity(root: Path) -> bytes:
    """A log identity file made by the command the operator runs (docs/kubernetes.md)."""
    out = root / "log-identity.json"
    if not out.exists():
        made = subprocess.run(
            [sys.executable, "-m", "qward", "cluster", "log-identity", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
    return out.read_bytes()


def _serve_iris(url: str, token: str) -> Obj:
    auth = {"Authorization": f"Bearer {token}"}
    trust = TrustBundle.from_bytes(httpx.get(url + "/v1/trust", headers=auth).content)
    sealed = seal_model(example_bytes("iris-mlp.onnx"), trust=trust)
    up = httpx.post(url + "/v1/models", headers=auth, params={"name": "iris"}, content=sealed)
    assert up.status_code == 200, up.text
    request = json.loads(example_bytes("iris-request.json"))
    reply = httpx.post(f"{url}/v2/models/iris/infer", json=request, headers=auth, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [0, 1, 2]
    return reply.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("overlay", ["in-cluster-postgres", "restricted"])
def test_the_replica_pod_serves_a_sealed_model(
    overlay: str, usable: None, database: str, scratch: Path
) -> None:
    secrets, token = _secrets(scratch)
    # No witnesses.json: the link in the state directory dangles, so no witnesses.
    pod = _replica(assemble(KUBERNETES / "overlays" / overlay), scratch / "pod", database, secrets)
    try:
        url = _start_replica(pod)
        _serve_iris(url, token)
        core, public = pod.procs[-2:]
        _check_identities(core.pid, public.pid, privsep=overlay != "restricted")
        _check_files(pod, public.pid)
    finally:
        pod.stop()


def test_two_replica_pods_share_one_log(usable: None, database: str, scratch: Path) -> None:
    # qward-0 and qward-1 as the StatefulSet makes them: each its own keystore volume, one
    # database and one log identity. Both serve; their receipts are entries of one log.
    objects = assemble(KUBERNETES / "overlays" / "in-cluster-postgres")
    secrets, token = _secrets(scratch)
    pods = [
        _replica(objects, scratch / name, database, secrets, name)
        for name in ("qward-0", "qward-1")
    ]
    try:
        urls = [_start_replica(pod) for pod in pods]
        replies = [_serve_iris(url, token) for url in urls]
        trusts = [
            TrustBundle.from_bytes((pod.volumes["state"] / "trust.json").read_bytes())
            for pod in pods
        ]
        assert trusts[0].origin == trusts[1].origin
        assert trusts[0].hpke_recipient.key_id != trusts[1].hpke_recipient.key_id
        indices = [int(reply["parameters"]["qward_log_index"]) for reply in replies]
        assert indices[0] != indices[1]
        # Either replica's public log shows the other's receipt entry under one checkpoint.
        checkpoints = [httpx.get(url + "/log/checkpoint").content for url in urls]
        sizes = [int(note.split(b"\n")[1]) for note in checkpoints]
        assert all(size > max(indices) for size in sizes)
        assert all(note.startswith(trusts[0].origin.encode() + b"\n") for note in checkpoints)
    finally:
        for pod in pods:
            pod.stop()


def _check_identities(core: int, public: int, *, privsep: bool) -> None:
    assert _status(public, "Uid") == "10002"
    assert _status(core, "Uid") == "10001"
    assert int(_status(public, "CapEff"), 16) == 0
    workers = [
        p
        for p in _descendants(core)
        if b"qward.runtime.worker" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert workers, "no worker under the core"
    expected_caps = (1 << 6) | (1 << 7) if privsep else 0
    assert int(_status(core, "CapEff"), 16) == expected_caps
    assert int(_status(core, "CapBnd"), 16) == expected_caps or not privsep
    assert _status(workers[0], "Uid") == ("10003" if privsep else "10001")


def _check_files(pod: Pod, public: int) -> None:
    state = pod.volumes["state"]
    # Even with the pod's fsGroup, the public server's uid cannot read the core's state.
    for name in ("keystore.json", "trust.json"):
        assert (state / name).exists(), name
        opened = _run_as(10002, [pod.fs_group], f"open({str(state / name)!r}, 'rb').read()")
        assert opened.returncode != 0 and "PermissionError" in opened.stderr, opened.stderr
    # The public server's uid reaches the core's socket through the pod's group; a worker's
    # uid, which has no supplementary group, cannot.
    reach = f"import socket; socket.socket(socket.AF_UNIX).connect({pod.local(_SOCKET)!r})"
    assert _run_as(10002, [pod.fs_group], reach).returncode == 0
    # Admin commands run in the core container find the running core at STATE/core.sock.
    classic = f"import socket; socket.socket(socket.AF_UNIX).connect({str(state / 'core.sock')!r})"
    assert _run_as(10001, [pod.fs_group], classic).returncode == 0
    worker = _run_as(10003, [], reach)
    assert worker.returncode != 0 and "PermissionError" in worker.stderr, worker.stderr
    environment = Path(f"/proc/{public}/environ").read_bytes()
    assert b"QWARD_LOG_DATABASE" not in environment and _PASSPHRASE.encode() not in environment


def test_the_witness_pods_cosign_the_replicas_log(
    usable: None, database: str, scratch: Path
) -> None:
    # Start the replica once (the log's keys are those of the shared identity), start the three
    # witness pods for its log, give the core their witnesses.json (ConfigMap) and start the
    # replica again. A 200 with a receipt then means
    # the checkpoint carries the 2-of-3 quorum the core pinned (the server answers 503 without).
    objects = assemble(KUBERNETES / "overlays" / "in-cluster-postgres")
    secrets, token = _secrets(scratch)
    first = _replica(objects, scratch / "first", database, secrets)
    try:
        _start_replica(first)
        with CoreClient(Path(first.local(_SOCKET))) as core:
            log_keys = "".join(f"{v.to_vkey()}\n" for v in core.trust().log_verifiers)
    finally:
        first.stop()
    witnesses, entries = [], []
    try:
        for i in (1, 2, 3):
            keys_dir = scratch / f"witness-{i}-keys"
            signers = create_witness_keys(keys_dir, name=f"qward.example/witness-{i}")
            obj = _workload(objects, "Deployment", f"qward-witness-{i}")
            pod = layout(
                obj,
                scratch / f"witness-{i}",
                {
                    "keys": {"witness-keys.json": (keys_dir / "witness-keys.json").read_bytes()},
                    "log": {"verifier-keys": log_keys.encode()},
                },
                f"qward-witness-{i}",
            )
            pod.ports = {8100: free_port()}
            witnesses.append(pod)
            pod.run_init()
            pod.start(pod.spec["containers"][0])
            url = f"http://127.0.0.1:{pod.ports[8100]}"
            entries.append({"url": url, "keys": [s.verifier().to_vkey() for s in signers]})
            _wait_witness(pod, url)
        config = json.dumps({"quorum": 2, "witnesses": entries}).encode()
        secrets["witnesses"] = {"witnesses.json": config}
        second = _replica(objects, scratch / "second", database, secrets)
        # The same core: its state volume carries over, owners and modes, as a pod's claim does.
        shutil.rmtree(second.volumes["state"])
        first.volumes["state"].rename(second.volumes["state"])
        try:
            reply = _serve_iris(_start_replica(second), token)
            assert reply["parameters"]["qward_receipt_id"]
            trust = TrustBundle.from_bytes((second.volumes["state"] / "trust.json").read_bytes())
            assert isinstance(trust.witness_policy, Quorum) and trust.witness_policy.threshold == 2
        finally:
            second.stop()
        for pod in witnesses:
            assert "--log=" in Path(f"/proc/{pod.procs[-1].pid}/cmdline").read_text(
                errors="replace"
            ).replace("\0", " ")
    finally:
        for pod in witnesses:
            pod.stop()


def _wait_witness(pod: Pod, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert pod.procs[-1].poll() is None, pod.log("witness").read_text(errors="replace")
        try:
            if httpx.get(url + "/witness", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail("the witness did not come up: " + pod.log("witness").read_text())


def test_the_core_cannot_drop_without_setpcap(usable: None, database: str, scratch: Path) -> None:
    # Why the core container adds SETPCAP: locking the securebits and shrinking the bounding set
    # need it. With SETUID and SETGID alone, the core stops before it opens anything.
    objects = assemble(KUBERNETES / "overlays" / "in-cluster-postgres")
    sts = _workload(objects, "StatefulSet", "qward")
    core = next(c for c in sts["spec"]["template"]["spec"]["containers"] if role(c) == "core")
    core["securityContext"]["capabilities"]["add"] = ["SETGID", "SETUID"]
    pod = layout(sts, scratch / "pod", {"keystore-passphrase": {"passphrase": b"p\n"}}, "qward-0")
    pod.database = database
    pod.run_init()
    assert pod.start(core).wait(60) == 2
    said = pod.log("core").read_text()
    # One line naming the failed drop, no traceback.
    assert "cannot drop to 10001:10001" in said and "Operation not permitted" in said
    assert "Traceback" not in said
    assert not (pod.volumes["state"] / "keystore.json").exists()


def test_the_kserve_predictor_serves_the_sealed_iris_model(usable: None, scratch: Path) -> None:
    # The predictor pod as KServe would assemble it: the ServingRuntime's containers and volumes
    # with the InferenceService's pod settings and init containers. KServe itself adds the model
    # volume at /mnt/models (storageUri); here it is a directory the test fills. The flow is the
    # one docs/kubernetes.md gives: start, fetch the core's keys, seal to them, serve.
    objects = assemble(KUBERNETES / "examples" / "kserve")
    ((_, spec),) = pods(objects)
    models = scratch / "models"
    secrets, token = _secrets(scratch)
    pod = layout_spec(spec, scratch / "predictor", secrets, "iris-mlp-predictor")
    pod.mounts["/mnt/models"] = models
    pod.ports = {8080: free_port()}
    core = next(c for c in spec["containers"] if role(c) == "core")
    public = next(c for c in spec["containers"] if c["name"] == "kserve-container")
    try:
        # First start: the core creates its keystore; the operator fetches its keys and seals.
        pod.run_init()
        pod.start(core)
        sock = Path(pod.local(_SOCKET))
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            assert pod.procs[-1].poll() is None, pod.log(core["name"]).read_text()
            time.sleep(0.1)
        with CoreClient(sock) as client:
            trust = client.trust()
        pod.stop()
        (models / "iris-mlp").mkdir(parents=True)
        sealed = seal_model(example_bytes("iris-mlp.onnx"), trust=trust)
        (models / "iris-mlp" / "model.sealed").write_bytes(sealed)
        os.chmod(models, 0o755)
        # Restart: both containers at once, as the kubelet starts them.
        pod.run_init()
        pod.start(public)
        pod.start(core)
        url = f"http://127.0.0.1:{pod.ports[8080]}"
        probes = [public[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")]
        deadline = time.monotonic() + 90
        while not all(_answers(url + path) for path in probes):
            for proc in pod.procs[-2:]:
                assert proc.poll() is None, pod.log(public["name"]).read_text()
            assert time.monotonic() < deadline, f"probes {probes} never answered 200"
            time.sleep(0.2)
        request = json.loads(example_bytes("iris-request.json"))
        auth = {"Authorization": f"Bearer {token}"}
        reply = httpx.post(
            f"{url}/v2/models/iris-mlp/infer", json=request, headers=auth, timeout=60
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"][0]["data"] == [0, 1, 2]
    finally:
        pod.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
