"""A remote client seals only to a core whose TPM evidence matches a published release.

A real software TPM (swtpm) stands in for a confidential VM's vTPM. The core measures its code,
environment and one config file into PCR 23; the release log publishes the PCR value that
measurement gives; the client fetches fresh evidence for its own nonce, appraises it against the
release policy, pins the keys, uploads a sealed model and gets a receipt that names the appraisal.
Then one byte of the measured file changes: the client refuses the core, and a core started under
the policy refuses to start at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from qward.receipts.trust import TrustBundle
from qward.sdk.http_client import HTTPClient

from .swtpm import PlatformCA, require_software_tpm, start_swtpm
from conftest import Served, example_bytes, iris_inputs, start_serve, stop_serve

require_software_tpm()


def _qward(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path | str]]:
    """A running swtpm, its AK certified by a platform CA, a measured config file and a
    release policy that accepts exactly this core with that file."""
    where = tmp_path_factory.mktemp("tpm-e2e")
    proc, tcti = start_swtpm(where / "swtpm")
    ca = PlatformCA()
    chain = ca.chain_file(tcti, where)
    root = where / "platform-ca.pem"
    root.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    config = where / "core-config.json"
    config.write_text('{"max_batch": 8}\n')
    releases = where / "releases"
    for args in (
        ("release", "init", "--origin", "example.com/qward/releases", "--dir", str(releases)),
        (
            "release",
            "publish",
            "--dir",
            str(releases),
            "--version",
            "1.0.0",
            "--measure",
            str(config),
        ),
        (
            "release",
            "policy",
            "--dir",
            str(releases),
            "-o",
            str(where / "policy.json"),
            "--tpm-root",
            str(root),
        ),
    ):
        done = _qward(*args)
        assert done.returncode == 0, done.stderr
    yield {
        "tcti": tcti,
        "chain": chain,
        "config": config,
        "policy": where / "policy.json",
        "dir": where,
    }
    proc.terminate()
    proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


def _fetch(served: Served, policy: Path, pinned: Path) -> subprocess.CompletedProcess[str]:
    """`qward trust fetch` against ``served`` under ``policy``, pinning to ``pinned``."""
    args = ["trust", "fetch", "--url", served.url, "--policy", str(policy), "-o", str(pinned)]
    return _qward(*args, env={"QWARD_TOKEN": served.token})


def _serve(platform: dict[str, Path | str], state: Path, *, policy: bool) -> Served:
    os.environ["QWARD_TPM_AK_CERT"] = str(platform["chain"])
    try:
        return start_serve(
            state,
            "--tpm-tcti",
            str(platform["tcti"]),
            "--measure",
            str(platform["config"]),
            *(["--attestation-policy", str(platform["policy"])] if policy else []),
        )
    finally:
        del os.environ["QWARD_TPM_AK_CERT"]


def test_client_seals_only_to_the_published_release(
    platform: dict[str, Path | str], tmp_path: Path
) -> None:
    served = _serve(platform, tmp_path / "state", policy=True)
    try:
        pinned = tmp_path / "trust.json"
        done = _fetch(served, Path(platform["policy"]), pinned)
        assert done.returncode == 0, done.stderr
        assert "affirming (tpm), release 1.0.0" in done.stdout
        trust = TrustBundle.from_bytes(pinned.read_bytes())
        assert trust.attestation is not None
        assert trust.attestation["status"] == "affirming"
        assert trust.attestation["release"]["version"] == "1.0.0"
        model = tmp_path / "iris.onnx"
        model.write_bytes(example_bytes("iris-mlp.onnx"))
        upload = [
            "upload",
            str(model),
            "--name",
            "iris",
            "--url",
            served.url,
            "--trust",
            str(pinned),
        ]
        done = _qward(*upload, env={"QWARD_TOKEN": served.token})
        assert done.returncode == 0, done.stderr
        assert "WARNING" not in done.stderr
        inputs, _ = iris_inputs()
        with HTTPClient(served.url, token=served.token, trust=trust) as client:
            result = client.infer("iris", inputs, seed=3)
        record = result.verified.body["attestation"]
        assert record["status"] == "affirming" and record["evidence_format"] == "tpm"
        assert record["release"]["version"] == "1.0.0"
        assert record["measurements"] == trust.attestation["measurements"]
    finally:
        stop_serve(served)


def test_one_changed_measured_byte_is_refused_by_client_and_core(
    platform: dict[str, Path | str], tmp_path: Path
) -> None:
    config = Path(platform["config"])
    original = config.read_bytes()
    config.write_bytes(original.replace(b"8", b"9"))
    try:
        # Started without the policy, the changed core runs; the client refuses it by name.
        served = _serve(platform, tmp_path / "state", policy=False)
        try:
            pinned = tmp_path / "trust.json"
            done = _fetch(served, Path(platform["policy"]), pinned)
            assert done.returncode == 1
            assert "release-measurements" in done.stderr and "sha256:23" in done.stderr
            assert not pinned.exists()
        finally:
            stop_serve(served)
        # Started under the policy, the core appraises itself and refuses to start.
        env = {"QWARD_TPM_AK_CERT": str(platform["chain"])}
        done = subprocess.run(
            [
                sys.executable, "-m", "qward.protected", "--state-dir", str(tmp_path / "state2"),
                "--tpm-tcti", str(platform["tcti"]), "--measure", str(config),
                "--attestation-policy", str(platform["policy"]),
            ],
            capture_output=True, text=True, timeout=120, env={**os.environ, **env},
        )  # fmt: skip
        assert done.returncode == 2
        assert "release-measurements" in done.stderr
    finally:
        config.write_bytes(original)
