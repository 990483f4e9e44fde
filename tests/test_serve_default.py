"""`qward serve` with no arguments serves the bundled model, and the README's calls work on it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from conftest import Served, example_bytes, free_port, start_serve, stop_serve, wait_for


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = start_serve(
        tmp_path_factory.mktemp("serve") / "state", upload=False, example_model=True
    )
    yield server
    stop_serve(server)


def _client_token(state: Path) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "qward",
            "token",
            "create",
            "--role",
            "client",
            "--model",
            "iris-mlp",
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_serve_without_arguments_serves_the_bundled_model_to_curl(served: Served) -> None:
    token = _client_token(served.state)
    request = json.loads(example_bytes("iris-request.json"))
    reply = httpx.post(
        f"{served.url}/v2/models/iris-mlp/infer",
        json=request,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    labels = next(o for o in body["outputs"] if o["datatype"] == "INT64")
    assert labels["data"] == [0, 1, 2]
    assert body["parameters"]["qward_log_index"] >= 0


def test_serve_without_arguments_answers_stock_tritonclient(served: Served) -> None:
    token = _client_token(served.state)
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    request = json.loads(example_bytes("iris-request.json"))["inputs"][0]
    tensor = triton.InferInput("X", request["shape"], "FP32")
    tensor.set_data_from_numpy(
        np.array(request["data"], dtype=np.float32).reshape(request["shape"])
    )
    result = client.infer("iris-mlp", [tensor], headers={"Authorization": f"Bearer {token}"})
    labels = [o["name"] for o in result.get_response()["outputs"]]
    assert labels, result.get_response()
    assert result.get_response()["parameters"]["qward_receipt_id"]
    client.close()


def test_serve_with_the_default_relative_state_dir(tmp_path: Path) -> None:
    """Regression: `qward serve` run in a directory (state in ./.qward, a relative path) never
    came up, because the core it starts runs with / as its working directory."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qward", "serve", "--port", str(port), "--no-example-model"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}", proc)
        assert (tmp_path / ".qward" / "keystore.json").exists()
    finally:
        proc.terminate()
        proc.wait(30)
