"""The public server follows the core: rotated keys (issue 11.5) and a witness quorum that is
not met (issue 11.11) — never a 200 with a receipt that fails ``qward verify``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from test_witness_service import witnessed_core_state

from public.serving import App, register_iris, start_app, stop_app
from qward.crypto.envelope import parse_sealed
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_model, verify
from qward.sdk.core_process import CoreProcess

from conftest import example_bytes


def _register(app: App) -> TrustBundle:
    return register_iris(app)


def _infer(app: App) -> httpx.Response:
    return httpx.post(
        app.url + "/v2/models/iris/infer",
        json=json.loads(example_bytes("iris-request.json")),
        headers=app.auth("admin"),
        timeout=60,
    )


def test_witness_down_is_503_naming_the_quorum_not_a_bad_receipt(tmp_path: Path) -> None:
    state, witnesses = witnessed_core_state(tmp_path, 2, quorum=2)
    core = CoreProcess.start(state)
    token = TokenStore(state / TOKEN_FILE).create(role="admin", models=())[0]
    proc = start_app(state, allow_model_upload=True)
    app = App(url=proc.url, tokens={"admin": token})  # type: ignore[attr-defined]
    try:
        trust = _register(app)
        ok = _infer(app)
        assert ok.status_code == 200, ok.text
        verify(ok.json()["parameters"]["qward_receipt"].encode(), trust=trust)
        witnesses[1].stop()
        down = _infer(app)
        assert down.status_code == 503, down.text
        assert "requires 2" in down.json()["error"]
    finally:
        stop_app(proc)
        core.stop()
        for w in witnesses:
            w.stop()


def _qward(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "250"},
    )


def test_key_rotation_and_retirement_reach_a_running_server(tmp_path: Path) -> None:
    state = tmp_path / "state"
    core = CoreProcess.start(state)
    token = TokenStore(state / TOKEN_FILE).create(role="admin", models=())[0]
    proc = start_app(state, allow_model_upload=True)
    app = App(url=proc.url, tokens={"admin": token})  # type: ignore[attr-defined]
    try:
        trust = _register(app)
        assert _infer(app).status_code == 200
        old_id = parse_sealed(seal_model(example_bytes("iris-mlp.onnx"), trust=trust)).key_id
        rotated = _qward("keys", "rotate", "hpke-unwrap", state=state)
        assert rotated.returncode == 0, rotated.stderr
        retired = _qward("keys", "retire", old_id, state=state)
        assert retired.returncode == 0, retired.stderr
        time.sleep(1.1)  # the server re-reads the trust bundle at most once a second
        after = _infer(app)
        assert after.status_code == 200, after.text
    finally:
        stop_app(proc)
        core.stop()
