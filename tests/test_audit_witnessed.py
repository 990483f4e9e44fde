"""Evidence bundles carry witness cosignatures, and offline verification enforces the *pinned*
quorum: a core with two `qward witness serve` processes, 2-of-2 pinned."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from test_witness_service import witnessed_core_state

from qward.audit import export_evidence, query_runs, verify_evidence
from qward.errors import SignatureError, VerificationError
from qward.receipts.trust import TrustBundle
from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess
from qward.tlog.note import NoteVerifier
from qward.tlog.store import SQLiteLogStore
from qward.tlog.witness_policy import Quorum, UnsafeNoWitnesses

from conftest import example_bytes, iris_inputs

_DASH = "\u2014 "


@dataclass(frozen=True)
class Witnessed:
    state: Path
    pinned: TrustBundle
    witnesses: tuple[str, ...]  # witness names
    runs: int  # receipts in the log


@pytest.fixture(scope="module")
def witnessed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Witnessed]:
    root = tmp_path_factory.mktemp("witnessed-audit")
    state, witnesses = witnessed_core_state(root, 2, quorum=2)
    core = CoreProcess.start(state)
    try:
        with core.client() as connection:
            pinned = connection.trust()
            sdk = Client(connection, trust=pinned)
            model = sdk.register(example_bytes("iris-mlp.onnx"), name="iris-mlp")
            inputs, seed = iris_inputs()
            for n in range(2):
                sdk.run(model.model_sha256, inputs, seed=seed + n)
            # One witness down: this run's receipt is logged, but under one cosignature only.
            witnesses[1].stop()
            with pytest.raises(VerificationError, match="requires 2"):
                sdk.run(model.model_sha256, inputs, seed=seed + 2)
    finally:
        core.stop()
        for w in witnesses:
            w.stop()
    names = tuple(sorted(w.keys[0].name for w in witnesses))
    yield Witnessed(state=state, pinned=pinned, witnesses=names, runs=3)


def _export(w: Witnessed, trust: TrustBundle | None = None) -> bytes:
    with SQLiteLogStore.open(w.state / "log.sqlite") as store:
        runs = query_runs(store)
        assert len(runs) == w.runs
        return export_evidence(store, trust or w.pinned, [r.index for r in runs])


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _with_checkpoint(bundle: bytes, edit: Callable[[str], str]) -> bytes:
    doc = json.loads(bundle)
    doc["checkpoint"] = edit(doc["checkpoint"])
    return _canonical(doc)


def _drop_witness(*names: str) -> Callable[[str], str]:
    def edit(note: str) -> str:
        return "".join(
            line
            for line in note.splitlines(keepends=True)
            if not any(line.startswith(_DASH + name + " ") for name in names)
        )

    return edit


def test_bundle_carries_the_cosignatures_and_verifies_with_the_pinned_quorum(
    witnessed: Witnessed,
) -> None:
    bundle = _export(witnessed)
    assert isinstance(witnessed.pinned.witness_policy, Quorum)
    note = json.loads(bundle)["checkpoint"]
    for name in witnessed.witnesses:
        assert _DASH + name + " " in note
    report = verify_evidence(bundle, trust=witnessed.pinned)
    assert report.cosigned_by == witnessed.witnesses and report.quorum == 2
    # The newest checkpoints carry one cosignature; the bundle falls back to the newest one the
    # quorum cosigned, which covers the two runs the SDK accepted but not the third.
    assert (report.entries, report.receipts) == (2, 2)
    assert witnessed.pinned.witness_policy.check(note.encode()) == witnessed.witnesses


def test_a_stripped_cosignature_fails_naming_the_quorum(witnessed: Witnessed) -> None:
    bundle = _export(witnessed)
    stripped = _with_checkpoint(bundle, _drop_witness(witnessed.witnesses[1]))
    with pytest.raises(VerificationError, match=r"pinned witness quorum.*requires 2"):
        verify_evidence(stripped, trust=witnessed.pinned)
    # Dropping the witness section from the bundle's own keys does not lower the pinned quorum.
    doc = json.loads(stripped)
    del doc["trust"]["witnesses"]
    downgraded = _canonical(doc)
    with pytest.raises(VerificationError, match="requires 2"):
        verify_evidence(downgraded, trust=witnessed.pinned)


def test_a_forged_cosignature_fails(witnessed: Witnessed) -> None:
    name = witnessed.witnesses[0]

    def forge(note: str) -> str:
        lines = note.splitlines(keepends=True)
        i = next(i for i, line in enumerate(lines) if line.startswith(_DASH + name + " "))
        raw = bytearray(base64.b64decode(lines[i].split(" ")[2]))
        raw[-1] ^= 0x01
        lines[i] = f"{_DASH}{name} {base64.b64encode(bytes(raw)).decode()}\n"
        return "".join(lines)

    with pytest.raises(SignatureError):
        verify_evidence(_with_checkpoint(_export(witnessed), forge), trust=witnessed.pinned)


def test_only_pinned_witness_keys_count(witnessed: Witnessed) -> None:
    bundle = _export(witnessed)
    stranger = NoteVerifier.for_ed25519_cosignature(
        "witness.example/stranger", ed25519.Ed25519PrivateKey.generate().public_key()
    )
    # A verifier that pins a witness the operator never used gets no quorum from the bundle,
    # whatever witness keys the bundle itself lists.
    other = replace(witnessed.pinned, witness_policy=Quorum(threshold=1, witnesses=(stranger,)))
    with pytest.raises(VerificationError, match="has 0 valid witness cosignatures"):
        verify_evidence(bundle, trust=other)


def test_a_pin_without_witnesses_accepts_only_because_it_says_so(witnessed: Witnessed) -> None:
    unsafe = replace(witnessed.pinned, witness_policy=UnsafeNoWitnesses())
    bundle = _export(witnessed)
    stripped = _with_checkpoint(bundle, _drop_witness(*witnessed.witnesses))
    report = verify_evidence(stripped, trust=unsafe)
    assert report.quorum == 0 and report.cosigned_by == () and report.unpinned_witnesses
    # The same bundle under the operator's pinned trust fails: the pin decides, not the bundle.
    with pytest.raises(VerificationError, match="has 0 valid"):
        verify_evidence(stripped, trust=witnessed.pinned)
    # Exported by an operator without witnesses, the newest checkpoint is used as it is.
    everything = _export(witnessed, trust=unsafe)
    assert verify_evidence(everything, trust=unsafe).receipts == witnessed.runs
    with pytest.raises(VerificationError, match="requires 2"):
        verify_evidence(everything, trust=witnessed.pinned)


def test_cli_export_and_verify_show_the_cosigners(witnessed: Witnessed, tmp_path: Path) -> None:
    def qward(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qward", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )

    bundle = tmp_path / "evidence.json"
    exported = qward("audit", "export", "-o", str(bundle), "--state-dir", str(witnessed.state))
    assert exported.returncode == 0, exported.stderr
    assert "2 receipts" in exported.stdout and "1 newer receipts" in exported.stdout
    pinned = tmp_path / "trust.json"
    pinned.write_bytes(witnessed.pinned.to_bytes())
    checked = qward("audit", "verify", str(bundle), "--trust", str(pinned))
    assert checked.returncode == 0, checked.stderr
    assert "cosigned by 2 pinned witnesses (quorum 2)" in checked.stdout
    bundle.write_bytes(_with_checkpoint(bundle.read_bytes(), _drop_witness(witnessed.witnesses[0])))
    refused = qward("audit", "verify", str(bundle), "--trust", str(pinned))
    assert refused.returncode == 1 and "pinned witness quorum" in refused.stderr
    assert "Traceback" not in refused.stderr
