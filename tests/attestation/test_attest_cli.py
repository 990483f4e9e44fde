"""`qward doctor`, `qward attest show|verify` on this machine (no TEE, no TPM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

QWARD = [sys.executable, "-m", "qward"]


def _qward(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QWARD, *args], capture_output=True, text=True, timeout=180, cwd=cwd)


def test_doctor_measures_the_sandbox_and_lists_evidence_sources(tmp_path: Path) -> None:
    done = _qward("doctor", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for layer in ("seccomp", "landlock", "network_namespace", "user_namespace", "rlimits"):
        assert layer in done.stdout
    for source in ("configfs-tsm", "/dev/sev-guest", "/dev/tdx_guest", "/dev/nsm", "tpm"):
        assert source in done.stdout
    assert "attestation: software-only" in done.stdout


def test_attest_show_then_verify_offline(tmp_path: Path) -> None:
    done = _qward("attest", "show", "-o", "evidence.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["evidence_format"] == "software-only"
    assert json.loads((tmp_path / "evidence.json").read_text())["nonce"]
    for args in (
        ("release", "init", "--origin", "example.com/rel", "--dir", "rel"),
        ("release", "publish", "--dir", "rel"),
        ("release", "policy", "--dir", "rel", "-o", "policy.json"),
    ):
        assert _qward(*args, cwd=tmp_path).returncode == 0
    refused = _qward("attest", "verify", "evidence.json", "--policy", "policy.json", cwd=tmp_path)
    assert refused.returncode == 1 and "software-only" in refused.stderr
    accepted = _qward(
        "attest", "verify", "evidence.json", "--policy", "policy.json", "--allow-software-only",
        cwd=tmp_path,
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["status"] == "software-only"
    (tmp_path / "garbage.json").write_text("not json")
    bad = _qward("attest", "verify", "garbage.json", "--policy", "policy.json", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
