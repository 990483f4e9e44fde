"""`qward serve` started as root: core, public server and worker run as three distinct users.

Needs root (CI runs the suite as root). The Python interpreter on the test machines lives under
/root (mode 0700), which the service users cannot traverse; for the test's duration only, the
blocking directories get ``o+x`` (``o+rx`` for a directory Python must list), restored in a
``finally``. Nothing else changes permissions outside the test's own state directory.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from procs import child_running, children, cmdline, environ, uid

from qward.privileges import first_unreadable, runtime_paths
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_model

from conftest import example_bytes, runtime_usable_by

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="privilege separation needs `qward serve` started as root"
)

_SECRET = "root-test passphrase 5521"
_NOBODY = 65534
_SERVE = (sys.executable, "-m", "qward", "serve")
_CAPS = (1 << 6) | (1 << 7)  # CAP_SETGID | CAP_SETUID
_PROBE = """
import socket, sys
from qward.framing import recv_frame, send_frame
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
send_frame(s, {"op": sys.argv[2]}, b"")
print(recv_frame(s, max_payload=1 << 20)[0])
"""


@pytest.fixture()
def traversable() -> Iterator[None]:
    """Let other users use this interpreter for the test, then put every mode back."""
    with runtime_usable_by(_NOBODY):
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def root_serve(traversable: None) -> Iterator[tuple[subprocess.Popen[bytes], str, Path, str]]:
    state = Path(tempfile.mkdtemp(prefix="qward-privsep-", dir="/tmp"))
    token, _ = TokenStore(state / TOKEN_FILE).create(role="admin", models=())
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "QWARD_UNSAFE_SINGLE_USER"}
    env["QWARD_KEYSTORE_PASSPHRASE"] = _SECRET
    log = state.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *_SERVE,
                "--state-dir",
                str(state),
                "--port",
                str(port),
                "--allow-model-upload",
                "--no-example-model",
            ],
            env=env,
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("root qward serve did not come up: " + log.read_text()[-2000:])
        yield proc, url, state, token
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(state, ignore_errors=True)
        log.unlink(missing_ok=True)


def _as(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    entry = pwd.getpwnam(user)
    return subprocess.run(
        [sys.executable, *argv],
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _caps(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(key)


def test_root_serve_runs_three_users_and_keeps_secrets_in_core(
    root_serve: tuple[subprocess.Popen[bytes], str, Path, str],
) -> None:
    proc, url, state, token = root_serve
    auth = {"Authorization": f"Bearer {token}"}
    # 1. A real V2 inference with the bundled model.
    trust = TrustBundle.from_bytes(httpx.get(url + "/v1/trust", headers=auth).content)
    sealed = seal_model(example_bytes("iris-mlp.onnx"), trust=trust)
    up = httpx.post(url + "/v1/models", headers=auth, params={"name": "iris"}, content=sealed)
    assert up.status_code == 200, up.text
    request = json.loads(example_bytes("iris-request.json"))
    reply = httpx.post(f"{url}/v2/models/iris/infer", json=request, headers=auth, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [0, 1, 2]

    # 2. Three distinct uids: public server, core, and a worker (a child of the core).
    core = child_running(proc.pid, "qward.protected")
    public = child_running(proc.pid, "qward.public")
    assert core is not None and public is not None
    workers = [p for p in children(core) if "qward.runtime.worker" in cmdline(p)]
    assert workers, "no worker under the core"
    uids = {uid(public), uid(core), uid(workers[0])}
    assert uids == {pwd.getpwnam(n).pw_uid for n in ("qward-api", "qward-core", "qward-worker")}
    assert len(uids) == 3 and 0 not in uids

    # 3. Capabilities: the core keeps exactly CAP_SETUID+CAP_SETGID, the rest none at all.
    assert _caps(core, "CapEff") == _CAPS and _caps(core, "CapBnd") == _CAPS
    assert _caps(public, "CapEff") == 0 and _caps(public, "CapPrm") == 0
    # The worker's sandbox may unshare a user namespace, where it holds capabilities over that
    # empty namespace only; on the host it has none.
    own_namespace = os.readlink(f"/proc/{workers[0]}/ns/user") != os.readlink("/proc/self/ns/user")
    assert own_namespace or _caps(workers[0], "CapEff") == 0

    # 4. The public server's user cannot open the keystore, and has no secret in its environment.
    for name in ("keystore.json", "keystore.key", "log.sqlite"):
        opened = _as("qward-api", "-c", f"open({str(state / name)!r}, 'rb')")
        assert opened.returncode != 0
        assert "PermissionError" in opened.stderr or "FileNotFoundError" in opened.stderr
    assert _SECRET.encode() not in environ(public)
    assert b"QWARD_KEYSTORE_PASSPHRASE" not in environ(public)
    assert _SECRET.encode() not in environ(core)

    # 5. A connection from the public server's uid: data ops yes, keys_rotate no.
    sock = str(state / "core.sock")
    trusted = _as("qward-api", "-c", _PROBE, sock, "trust")
    assert "'ok': True" in trusted.stdout, trusted.stderr
    refused = _as("qward-api", "-c", _PROBE, sock, "keys_rotate")
    api_uid = pwd.getpwnam("qward-api").pw_uid
    assert f"permission denied for uid {api_uid}" in refused.stdout, refused.stderr
    assert "'code': 'forbidden'" in refused.stdout
    # The worker's user cannot even reach the socket.
    worker = _as("qward-worker", "-c", _PROBE, sock, "trust")
    assert worker.returncode != 0 and "PermissionError" in worker.stderr


def test_root_serve_refuses_when_service_users_cannot_read_python(tmp_path: Path) -> None:
    blocked = next(
        (b for p in runtime_paths() if (b := first_unreadable(p, uid=_NOBODY, gids={_NOBODY}))),
        None,
    )
    if blocked is None:
        pytest.skip("this interpreter is readable by every user; nothing to refuse")
    env = {k: v for k, v in os.environ.items() if k != "QWARD_UNSAFE_SINGLE_USER"}
    done = subprocess.run(
        [*_SERVE, "--state-dir", str(tmp_path / "s"), "--port", str(_free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    # One error line (the CLI's console may wrap it to the terminal width).
    text = " ".join(done.stderr.split())
    assert text.count("error (privilege_error)") == 1, done.stderr
    assert f"cannot read {blocked} " in text
    assert "Traceback" not in done.stderr
