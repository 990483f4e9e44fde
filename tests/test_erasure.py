"""Erasable payloads: personal fields sealed under a per-subject key, crypto-shredded on request.

A real core with ``personal-data.json``, real runs and access records, the real log: the log holds
ciphertext only, the core opens it for an admin, an erasure deletes the key (and logs it) and
afterwards every proof still verifies while the payload is gone.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.audit import query_runs
from qward.crypto.erasable import (
    ACCESS_CONTEXT,
    ERASED,
    is_sealed_field,
    open_field,
    parameter_context,
    seal_field,
)
from qward.errors import FormatError, InputError, NotFoundError, VerificationError
from qward.receipts.receipt import ReceiptBundle
from qward.receipts.verify import Verifier
from qward.sdk.client import Client
from qward.sdk.core_client import CoreClient
from qward.sdk.core_process import CoreProcess
from qward.tlog.store import SQLiteLogStore

from conftest import example_bytes, iris_inputs

PATIENT = "patient-7 (Jane Example)"
PATIENT_ID = "P-123-456"


@dataclass(frozen=True)
class Personal:
    state: Path
    core: CoreClient
    sdk: Client
    receipt: bytes


@pytest.fixture(scope="module")
def personal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Personal]:
    state = tmp_path_factory.mktemp("personal")
    (state / "personal-data.json").write_text(
        json.dumps({"callers": True, "parameters": ["patient_id"]})
    )
    process = CoreProcess.start(state)
    with process.client() as connection:
        sdk = Client(connection, trust=connection.trust())
        model = sdk.register(example_bytes("iris-mlp.onnx"), name="iris-mlp")
        inputs, seed = iris_inputs()
        run = sdk.run(
            model.model_sha256,
            inputs,
            seed=seed,
            parameters={
                "patient_id": PATIENT_ID,
                "qward_subject": PATIENT,
                "qward_caller": "tok-alice",
                "note": "kept in clear",
            },
        )
        connection.record_access(
            token_id="tok-bob", role="client", method="POST", path="/v2/x", decision="allow"
        )
        yield Personal(state, connection, sdk, run.receipt)
    process.stop()


def _log_bytes(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in state.glob("log.sqlite*"))


def _parameters(receipt: bytes) -> dict[str, Any]:
    return ReceiptBundle.from_bytes(receipt).body["parameters"]  # type: ignore[no-any-return]


def test_the_log_holds_ciphertext_not_the_personal_values(personal: Personal) -> None:
    raw = _log_bytes(personal.state)
    for secret in (PATIENT_ID, PATIENT, "tok-alice", "tok-bob"):
        assert secret.encode() not in raw
    parameters = _parameters(personal.receipt)
    assert is_sealed_field(parameters["patient_id"]) and is_sealed_field(parameters["qward_caller"])
    assert parameters["note"] == "kept in clear" and "qward_subject" not in parameters
    store = SQLiteLogStore.open(personal.state / "log.sqlite")
    try:
        (run,) = query_runs(store)
        access = [
            json.loads(e)
            for _, e, _ in store.entries_with_leaf_hashes()
            if b'"qward/access/v1"' in e
        ]
    finally:
        store.close()
    assert run.caller is not None and run.caller.startswith("sealed:")
    assert is_sealed_field(access[-1]["token_id"])


def test_an_admin_opens_them_through_the_core(personal: Personal) -> None:
    parameters = _parameters(personal.receipt)
    assert personal.core.reveal_fields(
        [
            {"value": parameters["patient_id"], "context": parameter_context("patient_id")},
            {"value": parameters["qward_caller"], "context": parameter_context("qward_caller")},
            # The right ciphertext in the wrong place does not open.
        ]
    ) == [PATIENT_ID, "tok-alice"]
    with pytest.raises(VerificationError):
        personal.core.reveal_fields(
            [{"value": parameters["patient_id"], "context": ACCESS_CONTEXT}]
        )


def test_a_field_with_no_subject_is_refused(personal: Personal) -> None:
    inputs, seed = iris_inputs()
    sha = ReceiptBundle.from_bytes(personal.receipt).body["model"]["sha256"]
    with pytest.raises(InputError, match="need a data subject"):
        personal.sdk.run(sha, inputs, seed=seed, parameters={"patient_id": "P-9"})


def test_erasure_deletes_the_key_and_every_proof_survives(
    personal: Personal, tmp_path: Path
) -> None:
    db = personal.state / "subjects.sqlite"
    wrapped = [bytes(r[0]) for r in sqlite3.connect(db).execute("SELECT wrapped FROM subject_keys")]
    assert len(wrapped) == 2  # the patient's key and bob's (callers are subjects too)
    before = _log_bytes(personal.state)

    erased = subprocess.run(
        [sys.executable, "-m", "qward", "audit", "erase", "--subject", PATIENT,
         "--state-dir", str(personal.state)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert erased.returncode == 0, erased.stderr
    assert "erased" in erased.stdout

    # The key is gone from the store's file, byte for byte; bob's stays.
    remaining = db.read_bytes()
    assert sum(w in remaining for w in wrapped) == 1
    parameters = _parameters(personal.receipt)
    assert personal.core.reveal_fields(
        [{"value": parameters["patient_id"], "context": parameter_context("patient_id")}]
    ) == [ERASED]
    # The receipt still verifies (its entry's bytes, hence its proof, are unchanged) ...
    Verifier(trust=personal.sdk.trust).verify(personal.receipt)
    # ... and the log only grew: the old bytes are a prefix of what an auditor recomputes.
    verified = subprocess.run(
        [sys.executable, "-m", "qward", "log", "verify", "--state-dir", str(personal.state)],
        capture_output=True, text=True, timeout=120,
        env={"XDG_STATE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert len(_log_bytes(personal.state)) >= len(before)
    store = SQLiteLogStore.open(personal.state / "log.sqlite")
    try:
        kinds = [json.loads(e).get("type") for _, e, _ in store.entries_with_leaf_hashes()]
    finally:
        store.close()
    assert kinds.count("qward/erasure/v1") == 1

    listed = subprocess.run(
        [sys.executable, "-m", "qward", "audit", "query", "--json", "--reveal",
         "--state-dir", str(personal.state)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [r["caller"] for r in json.loads(listed.stdout)["runs"]] == [ERASED]

    again = subprocess.run(
        [sys.executable, "-m", "qward", "audit", "erase", "--subject", PATIENT,
         "--state-dir", str(personal.state)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 2 and "already erased" in again.stderr
    assert "Traceback" not in again.stderr


def test_erasing_on_a_core_without_personal_fields_says_why(core: CoreProcess) -> None:
    with core.client() as connection, pytest.raises(InputError, match=r"no personal-data\.json"):
        connection.erase_subject("anyone")


def test_an_unknown_subject_is_not_found(personal: Personal) -> None:
    with pytest.raises(NotFoundError):
        personal.core.erase_subject("nobody we know")


@pytest.mark.parametrize(
    ("content", "names"),
    [
        ("{", "not valid JSON"),
        ('{"callers": "yes"}', "callers must be true or false"),
        ('{"parameters": [1]}', "parameters must be a list"),
        ('{"parameters": ["qward_subject"]}', "never logged"),
        ('{"extra": 1}', "callers and parameters only"),
    ],
)
def test_a_bad_declaration_names_what_is_wrong(tmp_path: Path, content: str, names: str) -> None:
    from qward.protected.personal import PersonalDataPolicy

    (tmp_path / "personal-data.json").write_text(content)
    with pytest.raises(InputError, match=names):
        PersonalDataPolicy.load(tmp_path)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(value=_JSON, key=st.binary(min_size=32, max_size=32), context=st.text(max_size=30))
def test_sealed_fields_round_trip(value: object, key: bytes, context: str) -> None:
    sealed = seal_field(value, key=key, key_id="k1", context=context)
    assert open_field(sealed, key=key, context=context) == value


def test_a_changed_ciphertext_or_key_id_does_not_open() -> None:
    key = bytes(range(32))
    sealed = seal_field("P-1", key=key, key_id="k1", context="c")
    inner = sealed["qward_erasable"]
    flipped = {
        **inner,
        "ciphertext": inner["ciphertext"][:-2]
        + ("A" if inner["ciphertext"][-2] != "A" else "B")
        + inner["ciphertext"][-1],
    }
    with pytest.raises(VerificationError):
        open_field({"qward_erasable": flipped}, key=key, context="c")
    with pytest.raises(VerificationError):
        open_field({"qward_erasable": {**inner, "key_id": "k2"}}, key=key, context="c")
    with pytest.raises(FormatError):
        open_field({"qward_erasable": {**inner, "suite": "NONE"}}, key=key, context="c")
