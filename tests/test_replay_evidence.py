"""Replay verdicts as evidence: logged, proved offline, matched to their receipt across logs.

Two real cores, each with its own keys and log: A issues a receipt, A replays it (the operator
re-checking itself) and B replays it independently; the verdict documents verify offline, the
audit report tells the two apart, and evidence bundles carry the verdicts.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qward.audit import export_evidence, verify_evidence
from qward.audit.replays import replay_indices, replay_report
from qward.cli.replays import keep_verdict
from qward.core_api import ReplayResult
from qward.errors import FormatError, ProofError, ReplayMismatchError, VerificationError
from qward.receipts.receipt import ReceiptBundle
from qward.receipts.replay_evidence import (
    ReplayVerdictDocument,
    receipt_reference,
    verify_replay_verdict,
)
from qward.receipts.trust import TrustBundle
from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess
from qward.tlog.store import SQLiteLogStore

from conftest import example_bytes, iris_inputs


@dataclass(frozen=True)
class Core:
    state: Path
    process: CoreProcess
    sdk: Client
    model_sha256: str

    @property
    def trust(self) -> TrustBundle:
        return self.sdk.trust


def _start(state: Path) -> Iterator[Core]:
    process = CoreProcess.start(state)
    with process.client() as connection:
        sdk = Client(connection, trust=connection.trust())
        model = sdk.register(example_bytes("iris-mlp.onnx"), name="iris-mlp")
        yield Core(state, process, sdk, model.model_sha256)
    process.stop()


@pytest.fixture(scope="module")
def core_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    yield from _start(tmp_path_factory.mktemp("issuer"))


@pytest.fixture(scope="module")
def core_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    yield from _start(tmp_path_factory.mktemp("replayer"))


@pytest.fixture(scope="module")
def receipt(core_a: Core) -> bytes:
    inputs, seed = iris_inputs()
    return core_a.sdk.run(core_a.model_sha256, inputs, seed=seed).receipt


@pytest.fixture(scope="module")
def own_replay(core_a: Core, receipt: bytes) -> ReplayResult:
    return core_a.sdk.replay(receipt, iris_inputs()[0])


@pytest.fixture(scope="module")
def independent(core_a: Core, core_b: Core, receipt: bytes) -> ReplayResult:
    return core_b.sdk.replay(receipt, iris_inputs()[0], issuer_trust=core_a.trust)


def _entry(document: bytes) -> dict[str, object]:
    return json.loads(ReplayVerdictDocument.from_bytes(document).entry)  # type: ignore[no-any-return]


def test_a_replay_by_the_issuer_is_logged_and_proved(
    core_a: Core, receipt: bytes, own_replay: ReplayResult
) -> None:
    verified = verify_replay_verdict(
        own_replay.verdict_document, trust=core_a.trust, receipt=receipt
    )
    assert verified.verdict == "bitwise-identical" and not verified.independent
    assert verified.entry["receipt"] == receipt_reference(ReceiptBundle.from_bytes(receipt))
    replay = verified.entry["replay"]
    assert isinstance(replay, dict) and replay["log_origin"] == core_a.trust.origin
    assert replay["attestation"]["status"] in ("software-only", "unattested")
    assert replay["environment_sha256"] == verified.entry["original"]["environment_sha256"]
    # The entry is in the core's own log at the index the document names.
    store = SQLiteLogStore.open(core_a.state / "log.sqlite")
    try:
        assert (
            store.entry(own_replay.log_index)
            == ReplayVerdictDocument.from_bytes(own_replay.verdict_document).entry
        )
    finally:
        store.close()


def test_an_independent_replay_names_the_other_logs_receipt(
    core_a: Core, core_b: Core, receipt: bytes, independent: ReplayResult
) -> None:
    assert core_a.trust.origin != core_b.trust.origin
    verified = verify_replay_verdict(
        independent.verdict_document,
        trust=core_b.trust,
        receipt=receipt,
        receipt_trust=core_a.trust,
    )
    assert verified.independent and verified.verdict == "bitwise-identical"
    assert verified.checkpoint.origin == core_b.trust.origin
    # Against the issuer's pins, the replayer's checkpoint does not open.
    with pytest.raises(VerificationError):
        verify_replay_verdict(independent.verdict_document, trust=core_a.trust)


def test_a_foreign_receipt_without_the_issuers_trust_is_refused(
    core_b: Core, receipt: bytes
) -> None:
    with pytest.raises(VerificationError):
        core_b.sdk.replay(receipt, iris_inputs()[0])


def test_a_changed_verdict_fails_its_inclusion_proof(
    core_a: Core, own_replay: ReplayResult
) -> None:
    document = ReplayVerdictDocument.from_bytes(own_replay.verdict_document)
    entry = _entry(own_replay.verdict_document)
    entry["verdict"] = "within-tolerance"
    forged = ReplayVerdictDocument(
        entry=json.dumps(entry, sort_keys=True, separators=(",", ":")).encode(),
        index=document.index,
        inclusion_proof=document.inclusion_proof,
        checkpoint=document.checkpoint,
    )
    with pytest.raises(ProofError):
        verify_replay_verdict(forged.to_bytes(), trust=core_a.trust)


def test_a_verdict_about_another_receipt_is_refused(core_a: Core, own_replay: ReplayResult) -> None:
    inputs, seed = iris_inputs()
    other = core_a.sdk.run(core_a.model_sha256, inputs, seed=seed + 1).receipt
    with pytest.raises(VerificationError, match="different receipt"):
        verify_replay_verdict(own_replay.verdict_document, trust=core_a.trust, receipt=other)


def test_an_entry_claiming_independence_falsely_is_malformed(
    core_a: Core, own_replay: ReplayResult
) -> None:
    document = ReplayVerdictDocument.from_bytes(own_replay.verdict_document)
    entry = _entry(own_replay.verdict_document)
    entry["independent"] = True
    forged = ReplayVerdictDocument(
        entry=json.dumps(entry, sort_keys=True, separators=(",", ":")).encode(),
        index=document.index,
        inclusion_proof=document.inclusion_proof,
        checkpoint=document.checkpoint,
    )
    with pytest.raises(FormatError, match="independent"):
        verify_replay_verdict(forged.to_bytes(), trust=core_a.trust)


def test_a_mismatch_keeps_its_verdict_document(tmp_path: Path) -> None:
    """One machine cannot make an honest core disagree with itself (the runs are deterministic),
    so this checks the CLI's side: a mismatch's logged document is written before the error."""
    out = tmp_path / "verdict.json"
    with pytest.raises(ReplayMismatchError, match=str(out)), keep_verdict(out):
        raise ReplayMismatchError("replay verdict mismatch", verdict_document=b'{"doc":1}')
    assert out.read_bytes() == b'{"doc":1}'
    bare = tmp_path / "none.json"
    with pytest.raises(ReplayMismatchError), keep_verdict(bare):
        raise ReplayMismatchError("not from a logged replay")
    assert not bare.exists()


def test_the_report_tells_independent_replays_apart(
    core_a: Core,
    core_b: Core,
    receipt: bytes,
    own_replay: ReplayResult,
    independent: ReplayResult,
) -> None:
    bundle = ReceiptBundle.from_bytes(receipt)
    external = verify_replay_verdict(independent.verdict_document, trust=core_b.trust)
    store_a = SQLiteLogStore.open(core_a.state / "log.sqlite")
    store_b = SQLiteLogStore.open(core_b.state / "log.sqlite")
    try:
        alone = replay_report(store_a, core_a.trust.origin)
        together = replay_report(store_a, core_a.trust.origin, external=[external])
        on_b = replay_report(store_b, core_b.trust.origin)
    finally:
        store_b.close()
        store_a.close()
    mine = {r.index: r for r in alone.receipts}[bundle.index]
    assert mine.replays and not mine.independently_reproduced
    assert all(not r.independent for r in mine.replays)
    ours = {r.index: r for r in together.receipts}[bundle.index]
    assert ours.independently_reproduced
    assert any(r.log_origin == core_b.trust.origin for r in ours.replays)
    # B recorded a replay of a receipt it did not issue.
    assert [f["receipt"]["receipt_id"] for f in on_b.foreign] == [bundle.receipt_id]


def test_a_verdict_naming_a_different_body_is_an_error(
    core_a: Core, independent: ReplayResult, core_b: Core
) -> None:
    external = verify_replay_verdict(independent.verdict_document, trust=core_b.trust)
    reference = dict(external.entry["receipt"])  # type: ignore[call-overload]
    reference["body_sha256"] = "0" * 64
    altered = type(external)(
        entry={**external.entry, "receipt": reference},
        index=external.index,
        checkpoint=external.checkpoint,
    )
    store = SQLiteLogStore.open(core_a.state / "log.sqlite")
    try:
        with pytest.raises(VerificationError, match="different body"):
            replay_report(store, core_a.trust.origin, external=[altered])
    finally:
        store.close()


def test_evidence_bundles_carry_the_replay_verdicts(
    core_a: Core, receipt: bytes, own_replay: ReplayResult
) -> None:
    index = ReceiptBundle.from_bytes(receipt).index
    store = SQLiteLogStore.open(core_a.state / "log.sqlite")
    try:
        replays = replay_indices(store, core_a.trust.origin, {index})
        bundle = export_evidence(store, core_a.trust, [index, *replays])
    finally:
        store.close()
    assert own_replay.log_index in replays
    report = verify_evidence(bundle, trust=core_a.trust)
    assert report.receipts == 1 and report.replays == len(replays) >= 1
    # A verdict entry whose shape is wrong is caught even though its proof would be checked.
    doc = json.loads(bundle)
    item = next(i for i in doc["items"] if i["index"] == own_replay.log_index)
    entry = json.loads(base64.b64decode(item["entry"]))
    assert entry["type"] == "qward/replay-verdict/v1"


def _qward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", *args], capture_output=True, text=True, timeout=300
    )


def test_the_cli_keeps_lists_and_verifies_verdicts(
    core_a: Core, core_b: Core, receipt: bytes, tmp_path: Path
) -> None:
    receipt_path = tmp_path / "run.receipt.json"
    receipt_path.write_bytes(receipt)
    request = tmp_path / "request.json"
    request.write_bytes(example_bytes("iris-request.json"))
    trust_a, trust_b = tmp_path / "a.trust.json", tmp_path / "b.trust.json"
    trust_a.write_bytes(core_a.trust.to_bytes())
    trust_b.write_bytes(core_b.trust.to_bytes())
    verdict = tmp_path / "b.verdict.json"
    replayed = _qward(
        "replay", str(receipt_path), "--input", str(request), "--issuer-trust", str(trust_a),
        "--verdict-out", str(verdict), "--state-dir", str(core_b.state),
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    assert "bitwise-identical" in replayed.stdout and verdict.exists()

    checked = _qward(
        "audit", "verify-replay", str(verdict), "--trust", str(trust_b),
        "--receipt", str(receipt_path), "--receipt-trust", str(trust_a),
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "independent replay: bitwise-identical" in checked.stdout
    wrong = _qward("audit", "verify-replay", str(verdict), "--trust", str(trust_a))
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr

    listed = _qward(
        "audit", "replays", "--json", "--verdict", str(verdict), "--verdict-trust", str(trust_b),
        "--state-dir", str(core_a.state),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    rows = {r["receipt_id"]: r for r in json.loads(listed.stdout)["receipts"]}
    assert rows[ReceiptBundle.from_bytes(receipt).receipt_id]["independently_reproduced"]
    unpinned = _qward(
        "audit", "replays", "--verdict", str(verdict), "--state-dir", str(core_a.state)
    )
    assert unpinned.returncode == 2 and "no --verdict-trust pins the log" in unpinned.stderr
    pending = _qward(
        "audit", "replays", "--json", "--without-independent", "--state-dir", str(core_a.state)
    )
    assert pending.returncode == 0, pending.stderr
    assert ReceiptBundle.from_bytes(receipt).receipt_id in {
        r["receipt_id"] for r in json.loads(pending.stdout)["receipts"]
    }
