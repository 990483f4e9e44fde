"""Issue 10.3: before the seccomp allowlist, the worker already runs in its own user, mount, UTS,
IPC and network namespaces with no capabilities and under a coarse seccomp denylist; it cannot
name the core's socket, fork, make a memfd, set up io_uring or set the hostname. As root and as
an unprivileged uid (``run_as``)."""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from qward.runtime.supervisor import WorkerPolicy, WorkerProcess

from conftest import example_bytes, runtime_usable_by

NOBODY = (65534, 65534)
NEW_LAYERS = (
    "user_namespace",
    "mount_namespace",
    "uts_ipc_namespaces",
    "capabilities",
    "seccomp_denylist",
)
PROBES = (
    "connect_unix_socket_in_state_dir",
    "sethostname",
    "fork_before_seccomp",
    "memfd_create",
    "io_uring_setup",
    "sethostname_before_seccomp",
    "socket_before_seccomp",
)


@contextmanager
def _state_dir_with_socket() -> Iterator[tuple[str, str]]:
    # Outside /tmp, so that hiding the state directory itself is what is tested.
    state = tempfile.mkdtemp(prefix="qward-state-", dir="/var/tmp")
    path = os.path.join(state, "core.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(1)
        os.chmod(state, 0o755)
        os.chmod(path, 0o777)  # reachable by the worker's uid, were it not hidden
        yield state, path
    finally:
        listener.close()
        os.unlink(path)
        os.rmdir(state)


def _isolation(policy: WorkerPolicy) -> dict[str, Any]:
    model = example_bytes("iris-mlp.onnx")
    with (
        _state_dir_with_socket() as (state, sock),
        WorkerProcess.start(
            model=model,
            model_sha256=hashlib.sha256(model).hexdigest(),
            policy=policy,
            hide=(state,),
            probe_unix_socket=sock,
        ) as worker,
    ):
        return dict(worker.info["isolation"])


def _check(isolation: dict[str, Any]) -> None:
    assert isolation["degraded"] == [], isolation["layers"]
    for layer in NEW_LAYERS:
        assert isolation["layers"][layer]["enforced"], layer
    for name in PROBES:
        assert isolation["probes"][name].startswith("refused"), (name, isolation["probes"])


@pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox is checked as root, like CI")
def test_pre_seccomp_window_is_closed_as_root() -> None:
    hostname = socket.gethostname()
    _check(_isolation(WorkerPolicy()))
    assert socket.gethostname() == hostname


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a worker as another uid needs root")
def test_pre_seccomp_window_is_closed_as_nobody() -> None:
    with runtime_usable_by(NOBODY[0]):
        isolation = _isolation(WorkerPolicy(run_as=NOBODY))
    _check(isolation)
    assert "uid 65534" in isolation["layers"]["user_namespace"]["detail"]
