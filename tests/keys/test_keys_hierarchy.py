"""The key hierarchy: versions, states, the root-signed manifest, policies, and the keystore's
v1 -> v2 migration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qward.crypto.envelope import parse_sealed, seal
from qward.crypto.manifest import KeyState, Purpose, verify_manifest
from qward.encoding import canonical_json
from qward.errors import CryptoError, FormatError, InputError, SignatureError, UnknownKeyError
from qward.protected.key_admin import op_keys_list, op_keys_retire, op_keys_rotate
from qward.protected.keyring import KeyRing
from qward.protected.keystore import create_keystore, load_keystore
from qward.protected.service import MODEL_CONTENT_TYPE, CoreService
from qward.receipts.receipt import ReceiptSigning
from qward.receipts.verify import Verifier
from qward.sdk.client import seal_input, seal_model
from qward.suites import Policy, suite_policy

from .conftest import log_entries, make_service, write_v1_keystore
from conftest import example_bytes, iris_inputs

MODEL = b"not really onnx, but sealed all the same " * 20


def _seal_opaque(data: bytes, *, trust: Any) -> bytes:
    # Sealed as a model without the SDK's model check: these tests are about keys, not models.
    return seal(data, recipient=trust.hpke_recipient, content_type="application/onnx")


def _open(service: CoreService, blob: bytes) -> bytes:
    return service._open(
        blob,
        purpose="unseal-model",
        request_id="test",
        content_type=MODEL_CONTENT_TYPE,
        limit=1 << 20,
    )


def _rotate_kek(service: CoreService) -> dict[str, object]:
    reply, _ = op_keys_rotate(service, {"purpose": "hpke-unwrap"}, b"")
    return reply


def test_rotation_keeps_old_artifacts_openable(service: CoreService) -> None:
    old_trust = service.trust
    old_blob = _seal_opaque(MODEL, trust=old_trust)
    reply = _rotate_kek(service)
    assert reply["previous_key_id"] == old_trust.hpke_recipient.key_id
    assert service.trust.hpke_recipient.key_id == reply["key_id"] != reply["previous_key_id"]
    new_blob = _seal_opaque(MODEL, trust=service.trust)
    assert _open(service, old_blob) == MODEL
    assert _open(service, new_blob) == MODEL
    ring = service._keys.ring
    states = {v.key_id: v.state for v in ring.versions() if v.purpose == Purpose.HPKE_UNWRAP}
    assert states == {
        reply["previous_key_id"]: KeyState.ENABLED,
        reply["key_id"]: KeyState.PRIMARY,
    }


def test_rotation_survives_a_reload_and_is_logged(service: CoreService) -> None:
    state = service._keys.state_dir
    assert state is not None
    reply = _rotate_kek(service)
    again = load_keystore(state)
    assert again.hpke_public.key_id == reply["key_id"]
    assert set(again.hpke) == {reply["key_id"], reply["previous_key_id"]}
    actions = [json.loads(e) for e in log_entries(state)]
    rotated = [e for e in actions if e.get("action") == "key-rotated"]
    assert rotated and rotated[0]["details"]["key_id"] == reply["key_id"]
    assert (
        json.loads((state / "trust.json").read_bytes())["hpke_recipient"]["key_id"]
        == (reply["key_id"])
    )


def test_retired_key_refuses_with_its_id_and_state(service: CoreService) -> None:
    old_blob = _seal_opaque(MODEL, trust=service.trust)
    old_id = parse_sealed(old_blob).key_id
    with pytest.raises(InputError, match="primary"):
        op_keys_retire(service, {"key_id": old_id}, b"")
    _rotate_kek(service)
    op_keys_retire(service, {"key_id": old_id}, b"")
    with pytest.raises(UnknownKeyError, match=rf"key {old_id} \(hpke-unwrap v1\) is retired"):
        _open(service, old_blob)
    assert old_id not in service._keys.hpke
    state = service._keys.state_dir
    assert state is not None
    # The refusal persists: a restarted core refuses too.
    assert old_id not in load_keystore(state).hpke
    retired = [json.loads(e) for e in log_entries(state) if b"key-retired" in e]
    assert retired[0]["details"]["key_id"] == old_id


def test_old_receipt_keys_stay_in_the_trust_bundle(service: CoreService) -> None:
    first = service.trust.receipt_keys[0].key_id
    reply, _ = op_keys_rotate(service, {"purpose": "receipt-signing"}, b"")
    assert service._keys.receipt_signer.key_id == reply["key_id"]
    ids = [k.key_id for k in service.trust.receipt_keys]
    assert ids == [reply["key_id"], first]
    op_keys_retire(service, {"key_id": first}, b"")
    # Retired receipt keys still verify old receipts: their public halves stay pinned.
    assert first in [k.key_id for k in service.trust.receipt_keys]


def test_an_unknown_purpose_is_refused_clearly(service: CoreService) -> None:
    with pytest.raises(InputError, match="unknown key purpose"):
        op_keys_rotate(service, {"purpose": "everything"}, b"")


def test_manifest_is_signed_by_the_root_and_lists_every_version(service: CoreService) -> None:
    _rotate_kek(service)
    reply, signed = op_keys_list(service, {}, b"")
    manifest = verify_manifest(signed, root_key_id=reply["root_key_id"])
    assert manifest.policy == Policy.HYBRID
    kek = [k for k in manifest.keys if k.purpose == Purpose.HPKE_UNWRAP]
    assert sorted((k.version, k.state) for k in kek) == [
        (1, KeyState.ENABLED),
        (2, KeyState.PRIMARY),
    ]
    assert {k.purpose for k in manifest.keys} == set(Purpose)
    assert manifest.primary(Purpose.HPKE_UNWRAP).key_id == service.trust.hpke_recipient.key_id
    state = service._keys.state_dir
    assert state is not None
    assert (state / "keys-manifest.json").read_bytes() == signed
    # The root's signing is a logged key use, once per manifest version.
    op_keys_list(service, {}, b"")
    uses = [e for e in log_entries(state) if b"sign-key-manifest" in e]
    assert len(uses) == 1  # signed once for serial 2; listing again reuses it


def test_tampered_manifest_is_refused(service: CoreService) -> None:
    reply, signed = op_keys_list(service, {}, b"")
    doc = json.loads(signed)
    for key in doc["manifest"]["keys"]:
        if key["purpose"] == "hpke-unwrap":
            key["state"] = "retired"
    with pytest.raises((SignatureError, FormatError)):
        verify_manifest(canonical_json(doc))
    # A state change that keeps the invariants is caught by the signature alone.
    doc = json.loads(signed)
    doc["manifest"]["serial"] += 1
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(canonical_json(doc))
    # A manifest re-signed by another root is refused against the pinned root.
    other = KeyRing.generate(origin="keys.test/log")
    forged = other.manifest()
    from qward.crypto.manifest import signed_manifest_bytes

    forged_bytes = signed_manifest_bytes(forged, other.sign_manifest(forged))
    verify_manifest(forged_bytes)  # self-consistent ...
    with pytest.raises(SignatureError, match="not the pinned"):
        verify_manifest(forged_bytes, root_key_id=reply["root_key_id"])  # ... but not ours


def test_manifest_invariants_are_checked(service: CoreService) -> None:
    _, signed = op_keys_list(service, {}, b"")
    doc = json.loads(signed)
    doc["manifest"]["keys"][0]["key_id"] = "0" * 16
    with pytest.raises(FormatError, match="does not match"):
        verify_manifest(canonical_json(doc))


def test_policy_refuses_a_weaker_suite_for_new_seals(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519

    from qward.crypto.keys import HPKERecipientKey

    classical = HPKERecipientKey(
        x25519=x25519.X25519PrivateKey.generate().public_key().public_bytes_raw(),
        suite="X25519_HKDF_SHA256_AES_256_GCM",
    )
    hybrid = suite_policy("hybrid")
    with pytest.raises(CryptoError, match="not accepted for new seals"):
        seal(MODEL, recipient=classical, content_type="x", policy=hybrid)
    # The same artifact is still readable under hybrid (so it can be rewrapped) ...
    blob = seal(MODEL, recipient=classical, content_type="x", policy=suite_policy("classical"))
    hybrid.require_readable(parse_sealed(blob).suite, what="artifact")
    # ... but not under the post-quantum policies.
    with pytest.raises(CryptoError, match="not readable"):
        suite_policy("cnsa").require_readable(parse_sealed(blob).suite, what="artifact")
    with pytest.raises(FormatError, match="unknown suite policy"):
        suite_policy("quantum-ish")


def test_policies_name_their_suites_in_full() -> None:
    assert suite_policy("classical").accepted == {"X25519_HKDF_SHA256_AES_256_GCM", "ED25519"}
    assert suite_policy("hybrid").accepted == {
        "MLKEM768_X25519_HKDF_SHA256_AES_256_GCM",
        "MLDSA65_ED25519",
    }
    assert suite_policy("pq-only").accepted == {"MLKEM768_HKDF_SHA256_AES_256_GCM", "MLDSA65"}
    assert suite_policy("cnsa").accepted == {"MLKEM1024_HKDF_SHA384_AES_256_GCM", "MLDSA87"}


def _signed_run(service: CoreService, model: str) -> bytes:
    inputs, seed = iris_inputs()
    reply, _ = service.dispatch(
        {"op": "run", "model_sha256": model, "seed": seed}, seal_input(inputs, trust=service.trust)
    )
    return str(reply["receipt"]).encode()


@pytest.mark.parametrize(
    ("policy", "kem", "signature"),
    [
        ("cnsa", "MLKEM1024_HKDF_SHA384_AES_256_GCM", "MLDSA87"),
        ("pq-only", "MLKEM768_HKDF_SHA256_AES_256_GCM", "MLDSA65"),
        ("classical", "X25519_HKDF_SHA256_AES_256_GCM", "ED25519"),
    ],
)
def test_a_policy_switch_moves_seals_and_receipts_to_its_suites(
    tmp_path: Path, policy: str, kem: str, signature: str
) -> None:
    # Per-receipt signing: the receipt key's suite is what the policy switch must move.
    service = make_service(tmp_path / "state", receipt_signing=ReceiptSigning.PER_RECEIPT)
    try:
        _policy_switch(service, policy, kem, signature)
    finally:
        service._models.close()


def _policy_switch(service: CoreService, policy: str, kem: str, signature: str) -> None:
    reply, _ = service.dispatch(
        {"op": "register_model", "name": "iris"},
        seal_model(example_bytes("iris-mlp.onnx"), trust=service.trust),
    )
    model = str(reply["model_sha256"])
    before = _signed_run(service, model)
    assert json.loads(before)["signature"]["suite"] == "MLDSA65_ED25519"
    op_keys_rotate(service, {"policy": policy}, b"")
    assert service.trust.hpke_recipient.suite == kem
    after = _signed_run(service, model)
    assert json.loads(after)["signature"]["suite"] == signature
    # Both verify against the new trust bundle: it keeps every enabled receipt key version.
    verifier = Verifier(trust=service.trust)
    assert verifier.verify(before).body["seed"] == verifier.verify(after).body["seed"]
    # A receipt re-labelled with the old suite under the new key id does not pass.
    doc = json.loads(after)
    doc["signature"]["suite"] = "MLDSA65_ED25519"
    with pytest.raises((FormatError, SignatureError)):
        verifier.verify(canonical_json(doc))


def test_v1_keystore_migrates_on_load_and_keeps_key_ids(tmp_path: Path) -> None:
    write_v1_keystore(tmp_path, origin="v1.test/log")
    assert json.loads((tmp_path / "keystore.json").read_bytes())["format"] == "qward/keystore/v1"
    keys = load_keystore(tmp_path)
    assert keys.migrated_from == "qward/keystore/v1"
    assert json.loads((tmp_path / "keystore.json").read_bytes())["format"] == "qward/keystore/v2"
    again = load_keystore(tmp_path)
    assert again.migrated_from == ""
    assert again.hpke_public == keys.hpke_public
    assert again.receipt_signer.key_id == keys.receipt_signer.key_id
    assert again.ring.manifest().root_key_id == keys.ring.manifest().root_key_id
    assert [v.version for v in again.ring.versions()] == [1, 1, 1]
    assert (tmp_path / "keystore.json").stat().st_mode & 0o777 == 0o600


def test_v1_artifacts_open_after_migration(tmp_path: Path) -> None:
    from qward.protected.opening import open_sealed

    write_v1_keystore(tmp_path, origin="v1.test/log")
    first = load_keystore(tmp_path)
    blob = seal(MODEL, recipient=first.hpke_public, content_type="x")
    migrated = load_keystore(tmp_path)
    assert open_sealed(blob, keys=migrated.hpke, limit=1 << 20, expected_content_type="x") == MODEL


def test_v2_keystore_round_trips_with_a_passphrase(tmp_path: Path) -> None:
    keys = create_keystore(tmp_path, origin="o", passphrase="correct horse")
    keys.ring.rotate(Purpose.HPKE_UNWRAP)
    keys.save()
    again = load_keystore(tmp_path, passphrase="correct horse")
    assert again.ring.manifest() == keys.ring.manifest()
    from qward.errors import KeystoreError

    with pytest.raises(KeystoreError, match="wrong passphrase"):
        load_keystore(tmp_path, passphrase="wrong horse")
