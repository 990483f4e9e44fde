"""Process boundaries: the public process never imports the protected core, and never holds a
private key or a plaintext model in its memory, even after serving real requests."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_input, seal_model
from qward.tensors import tensors_from_json

from conftest import Served, example_bytes, free_port, wait_for

PUBLIC_FLOW = textwrap.dedent("""
    import sys
    from pathlib import Path
    from importlib import resources
    import qward.cli, qward.public.app, qward.sdk.client
    from qward.sdk.client import Client
    from qward.sdk.core_process import CoreProcess
    from qward.tensors import tensors_from_json
    core = CoreProcess.start(Path(sys.argv[1]))
    try:
        with core.client() as c:
            sdk = Client(c, trust=c.trust())
            model = resources.files("qward.examples").joinpath("iris-mlp.onnx").read_bytes()
            info = sdk.register(model, name="iris")
            inputs, _ = tensors_from_json(
                resources.files("qward.examples").joinpath("iris-request.json").read_bytes())
            sdk.run(info.model_sha256, inputs, seed=3)
    finally:
        core.stop()
    loaded = sorted(m for m in sys.modules if m.startswith("qward.protected"))
    print("PROTECTED:" + ",".join(loaded))
""")


def test_public_flow_never_imports_protected(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PUBLIC_FLOW, str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "PROTECTED:\n" in out, out


def _readable_memory(pid: int) -> Iterator[bytes]:
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            match = re.match(r"([0-9a-f]+)-([0-9a-f]+) (r...)", line)
            if not match or "[vvar" in line or "[vsyscall" in line:
                continue
            start, end = int(match.group(1), 16), int(match.group(2), 16)
            try:
                mem.seek(start)
                yield mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue


def _private_seeds(state_dir: Path) -> list[bytes]:
    """The core's private key seeds, read the way an attacker with the key file would."""
    import json

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from qward.encoding import b64decode

    doc = json.loads((state_dir / "keystore.json").read_bytes())
    kek = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"qward/keystore/v1/kek"
    ).derive((state_dir / "keystore.key").read_bytes())
    aad = json.dumps(
        {"format": doc["format"], "protection": doc["protection"]},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    material = json.loads(
        AESGCM(kek).decrypt(
            b64decode(doc["nonce"], what="n"), b64decode(doc["ciphertext"], what="c"), aad
        )
    )
    return [
        b64decode(v, what=k)
        for section in ("hpke", "receipt", "log")
        for k, v in material[section].items()
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's memory needs root")
def test_public_server_memory_holds_no_key_and_no_plaintext_model(
    public_server: Served,
) -> None:
    proc, url, state_dir, auth = (
        public_server.proc,
        public_server.url,
        public_server.state,
        public_server.headers,
    )
    trust = TrustBundle.from_bytes(httpx.get(url + "/v1/trust", headers=auth).content)
    model = example_bytes("iris-mlp.onnx")
    registered = httpx.post(
        url + "/v1/models",
        headers=auth,
        params={"name": "iris"},
        content=seal_model(model, trust=trust),
        timeout=60,
    )
    assert registered.status_code == 200, registered.text
    digest = registered.json()["model_sha256"]
    assert digest == hashlib.sha256(model).hexdigest()
    inputs, _ = tensors_from_json(example_bytes("iris-request.json"))
    ran = httpx.post(
        f"{url}/v1/models/{digest}/infer",
        headers=auth,
        params={"seed": 5},
        content=seal_input(inputs, trust=trust),
        timeout=60,
    )
    assert ran.status_code == 200, ran.text
    assert ran.json()["outputs"][0]["name"] == "label"

    secrets = _private_seeds(state_dir)
    # Distinctive slices of the plaintext model: its doc string and weight bytes.
    model_markers = [b"iris MLP classifier", model[len(model) // 2 : len(model) // 2 + 48]]
    found = {"key": 0, "model": 0}
    for region in _readable_memory(proc.pid):
        found["key"] += sum(s in region for s in secrets)
        found["model"] += sum(m in region for m in model_markers)
    assert found == {"key": 0, "model": 0}


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's memory needs root")
def test_scan_finds_a_model_that_another_process_holds(tmp_path: Path) -> None:
    """The memory scan is not vacuous: it finds the model in a process that did load it."""
    model = example_bytes("iris-mlp.onnx")
    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; d = open(sys.argv[1], 'rb').read(); "
            "print('loaded', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"loaded\n"
        marker = model[len(model) // 2 : len(model) // 2 + 48]
        assert any(marker in region for region in _readable_memory(holder.pid))
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_bad_request_to_public_api_is_a_clear_error(
    public_server: Served,
) -> None:
    url, auth = public_server.url, public_server.headers
    response = httpx.post(
        f"{url}/v1/models", params={"name": "x"}, content=b"not sealed", headers=auth
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_format"
    assert "Traceback" not in response.text


def _core_pids(state_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"qward.protected" in cmdline and str(state_dir).encode() in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_core_does_not_outlive_qward_serve(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qward", "serve", "--state-dir", str(tmp_path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(f"http://127.0.0.1:{port}", proc)
    assert len(_core_pids(tmp_path)) == 1
    proc.send_signal(sig)
    proc.wait(30)
    deadline = time.monotonic() + 20
    while _core_pids(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _core_pids(tmp_path) == []
