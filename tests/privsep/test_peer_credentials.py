"""The core checks every connection's peer uid (SO_PEERCRED) against an allow-list per operation.

Runs unprivileged: the core is started with an ``--admin-uid`` that is not the caller's, so the
caller is an api-class peer and must be refused the admin operations.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qward.errors import QwardError
from qward.framing import recv_frame, send_frame
from qward.protected.key_admin import KEY_ADMIN_OPS
from qward.protected.peer_policy import OPERATION_CLASSES, PeerPolicy, PermissionDeniedError
from qward.protected.service import _OPS
from qward.sdk.core_client import CoreClient

_NOBODY_ADMIN = 4242


def _start_core(state: Path, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qward.protected", "--state-dir", str(state), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the core exited during start-up"
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(state / "core.sock"))
                return proc
            except OSError:
                time.sleep(0.05)
    proc.kill()
    pytest.fail("core did not start")


@pytest.fixture()
def api_class_core(tmp_path: Path) -> Iterator[Path]:
    proc = _start_core(tmp_path, "--admin-uid", str(_NOBODY_ADMIN), "--api-uid", str(os.getuid()))
    yield tmp_path
    proc.terminate()
    proc.wait(30)


def _raw(path: Path, header: dict[str, object]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        send_frame(sock, header, b"")
        reply, _ = recv_frame(sock, max_payload=1 << 20)
    return reply


def test_admin_ops_refused_for_api_uid(api_class_core: Path) -> None:
    sock = api_class_core / "core.sock"
    with CoreClient(sock) as client:
        assert client.trust() is not None  # a data operation is allowed
        with pytest.raises(QwardError, match=f"permission denied for uid {os.getuid()}"):
            client.call({"op": "keys_rotate", "kind": "hpke"})
    for op in ("keys_rotate", "keys_list", "record_admin"):
        reply = _raw(sock, {"op": op})
        assert reply == {
            "ok": False,
            "code": "forbidden",
            "message": f"permission denied for uid {os.getuid()}",
        }


def test_refusal_is_logged_once_as_access_entry(api_class_core: Path) -> None:
    _raw(api_class_core / "core.sock", {"op": "keys_rotate"})
    time.sleep(0.5)
    with sqlite3.connect(api_class_core / "log.sqlite") as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        hits = 0
        for table in tables:
            for row in db.execute(f"select * from {table}"):
                hits += sum(
                    1
                    for cell in row
                    if isinstance(cell, bytes)
                    and b'"decision":"forbidden"' in cell
                    and b"keys_rotate" in cell
                )
    assert hits == 1


def test_unknown_uid_refused_even_data_ops(tmp_path: Path) -> None:
    proc = _start_core(tmp_path, "--admin-uid", str(_NOBODY_ADMIN))
    try:
        reply = _raw(tmp_path / "core.sock", {"op": "trust"})
        assert reply["code"] == "forbidden"
    finally:
        proc.terminate()
        proc.wait(30)


def test_default_policy_keeps_own_uid_admin(tmp_path: Path) -> None:
    # `qward demo`, `qward keys` etc. start a core under the caller's uid and must keep working.
    proc = _start_core(tmp_path)
    try:
        assert _raw(tmp_path / "core.sock", {"op": "keys_list"})["ok"] is True
    finally:
        proc.terminate()
        proc.wait(30)


def test_every_core_operation_is_classified() -> None:
    assert set(OPERATION_CLASSES) == set(_OPS) | set(KEY_ADMIN_OPS)


def test_worker_uid_is_refused_everything() -> None:
    policy = PeerPolicy.from_uids(admin=[0, 7], api=[7], denied=[7])
    for op in OPERATION_CLASSES:
        with pytest.raises(PermissionDeniedError):
            policy.check(op, 7)
    policy.check("keys_rotate", 0)
    with pytest.raises(PermissionDeniedError):
        PeerPolicy.from_uids(admin=[0], api=[5]).check("record_admin", 5)
    with pytest.raises(PermissionDeniedError):
        PeerPolicy.from_uids(admin=[0], api=[5]).check("some_new_op", 5)
