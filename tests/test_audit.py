"""Audit query (who ran what on which input, when) and offline evidence bundles."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qward.audit import export_evidence, query_runs, verify_evidence
from qward.errors import ProofError, VerificationError
from qward.public.auth import TOKEN_FILE, TokenStore
from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_model
from qward.sdk.core_process import CoreProcess
from qward.tlog.store import SQLiteLogStore

from conftest import Served, example_bytes, start_serve, stop_serve


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str, TrustBundle]]:
    state = tmp_path_factory.mktemp("audit")
    alice, principal = TokenStore(state / TOKEN_FILE).create(role="client", models=("iris",))
    served = start_serve(state)
    trust = TrustBundle.from_bytes(
        httpx.get(served.url + "/v1/trust", headers=served.headers).content
    )
    httpx.post(
        served.url + "/v1/models",
        params={"name": "iris"},
        headers=served.headers,
        content=seal_model(example_bytes("iris-mlp.onnx"), trust=trust),
    ).raise_for_status()
    request = json.loads(example_bytes("iris-request.json"))
    for token in (alice, alice, served.token):
        httpx.post(
            served.url + "/v2/models/iris/infer",
            json=request,
            headers={"Authorization": f"Bearer {token}"},
        ).raise_for_status()
    yield served, principal.token_id, trust
    stop_serve(served)


def _store(served: Served) -> SQLiteLogStore:
    return SQLiteLogStore.open(served.state / "log.sqlite")


def test_query_says_who_ran_what(audited: tuple[Served, str, TrustBundle]) -> None:
    served, alice, _ = audited
    store = _store(served)
    runs = query_runs(store, model="iris")
    mine = query_runs(store, caller=alice)
    store.close()
    assert len(runs) == 3 and len(mine) == 2
    assert {r.model_name for r in runs} == {"iris"}
    assert len({r.input_sha256 for r in runs}) == 1  # same request, same input digest
    assert all(r.issued_at.endswith("Z") for r in runs)


def test_evidence_bundle_verifies_offline(
    audited: tuple[Served, str, TrustBundle], tmp_path: Path
) -> None:
    served, alice, trust = audited
    store = _store(served)
    bundle = export_evidence(store, trust, [r.index for r in query_runs(store, caller=alice)])
    store.close()
    report = verify_evidence(bundle, trust=trust)
    assert (report.entries, report.receipts) == (2, 2)
    doc = json.loads(bundle)
    entry = bytearray(base64.b64decode(doc["items"][0]["entry"]))
    entry[entry.index(b'"seed":') + 7] ^= 0x01
    doc["items"][0]["entry"] = base64.b64encode(bytes(entry)).decode()
    tampered = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    with pytest.raises(ProofError):
        verify_evidence(tampered, trust=trust)
    other = CoreProcess.start(tmp_path / "other")
    try:
        with other.client() as connection:
            foreign = connection.trust()
    finally:
        other.stop()
    with pytest.raises(VerificationError, match="differ from the pinned"):
        verify_evidence(bundle, trust=foreign)


def test_audit_cli(audited: tuple[Served, str, TrustBundle], tmp_path: Path) -> None:
    served, alice, trust = audited

    def qward(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qward", *args], capture_output=True, text=True, timeout=120
        )

    listed = qward("audit", "query", "--caller", alice, "--state-dir", str(served.state))
    assert listed.returncode == 0 and "2 runs" in listed.stdout
    bundle = tmp_path / "evidence.json"
    exported = qward("audit", "export", "-o", str(bundle), "--state-dir", str(served.state))
    assert exported.returncode == 0, exported.stderr
    pinned = tmp_path / "trust.json"
    pinned.write_bytes(trust.to_bytes())
    checked = qward("audit", "verify", str(bundle), "--trust", str(pinned))
    assert checked.returncode == 0 and "3 entries (3 receipts, 0 replay verdicts)" in checked.stdout
    bundle.write_bytes(bundle.read_bytes().replace(b'"index":', b'"index" :', 1))
    broken = qward("audit", "verify", str(bundle), "--trust", str(pinned))
    # Not canonical JSON is a malformed file (exit 2), as for receipts.
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
