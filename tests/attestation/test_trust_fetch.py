"""A client pins a remote core's keys only after appraising evidence for its own nonce.

This machine has no TEE: the core's evidence is software-only, which a policy refuses unless the
client explicitly accepts it (then the bundle is stamped and every seal warns). The TPM path, with
a real software TPM, is in ``test_tpm_end_to_end.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Served, example_bytes, start_serve, stop_serve

QWARD = [sys.executable, "-m", "qward"]


def _qward(*args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    env = {"QWARD_TOKEN": token} if token else {}
    return subprocess.run(
        [*QWARD, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start_serve(tmp_path_factory.mktemp("attest") / "state", example_model=True)
    yield served
    stop_serve(served)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("release")
    done = _qward("release", "init", "--origin", "example.com/rel", "--dir", str(where / "log"))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 2  # an Ed25519 and an ML-DSA-44 verifier key
    assert _qward("release", "publish", "--dir", str(where / "log")).returncode == 0
    out = where / "policy.json"
    done = _qward("release", "policy", "--dir", str(where / "log"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_software_only_evidence_is_refused_by_name(
    served: Served, policy: Path, tmp_path: Path
) -> None:
    pinned = tmp_path / "trust.json"
    args = ["trust", "fetch", "--url", served.url, "--policy", str(policy), "--out", str(pinned)]
    done = _qward(*args, token=served.token)
    assert done.returncode == 1
    assert "software-only" in done.stderr and "Traceback" not in done.stderr
    assert not pinned.exists()


def test_accepting_software_only_is_stamped_and_every_seal_warns(
    served: Served, policy: Path, tmp_path: Path
) -> None:
    pinned = tmp_path / "trust.json"
    fetch = ["trust", "fetch", "--url", served.url, "--policy", str(policy), "--out", str(pinned)]
    done = _qward(*fetch, "--allow-software-only", token=served.token)
    assert done.returncode == 0, done.stderr
    record = json.loads(pinned.read_bytes())["attestation"]
    assert record["status"] == "software-only" and record["evidence_format"] == "software-only"
    assert record["release"] is None
    # The core logged the evidence it handed out, bound to the client's nonce.
    entry = _log_entry(served.state, record["core_log_index"])
    assert entry["type"] == "qward/attestation/v1" and entry["purpose"] == "client-nonce"
    model = tmp_path / "iris.onnx"
    model.write_bytes(example_bytes("iris-mlp.onnx"))
    seal = ["seal", str(model), "-o", str(tmp_path / "s"), "--trust", str(pinned)]
    refused = _qward(*seal)
    assert refused.returncode == 1 and "software-only" in refused.stderr
    done = _qward(*seal, "--allow-software-only")
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and (tmp_path / "s").stat().st_size > 0


def test_the_attestation_endpoint_checks_its_input(served: Served) -> None:
    url = served.url + "/v1/attestation"
    assert httpx.post(url, json={"nonce": "00" * 32}).status_code == 401
    for bad in ("00" * 8, "zz" * 32, "00" * 65, 7):
        response = httpx.post(url, json={"nonce": bad}, headers=served.headers)
        assert response.status_code == 400, response.text
        assert "nonce" in response.text
    response = httpx.post(url, json={"nonce": "ab" * 32}, headers=served.headers)
    assert response.status_code == 200
    answer = response.json()
    assert answer["nonce"] == "ab" * 32 and answer["evidence"]["kind"] == "software-only"
    assert answer["trust"] == json.loads(
        httpx.get(served.url + "/v1/trust", headers=served.headers).content
    )


def test_receipts_carry_the_cores_attestation_record(served: Served) -> None:
    body = {
        "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
    }
    response = httpx.post(
        served.url + "/v2/models/iris-mlp/infer", json=body, headers=served.headers, timeout=60
    )
    assert response.status_code == 200, response.text
    receipt = json.loads(response.json()["parameters"]["qward_receipt"])
    record = receipt["body"]["attestation"]
    assert record["status"] == "software-only" and record["evidence_format"] == "software-only"
    entry = _log_entry(served.state, record["log_index"])
    assert entry["type"] == "qward/attestation/v1" and entry["purpose"] == "core-start"


def _log_entry(state: Path, index: int) -> dict[str, object]:
    with sqlite3.connect(state / "log.sqlite") as db:
        (data,) = db.execute("SELECT data FROM entries WHERE idx = ?", (index,)).fetchone()
    return json.loads(data)
