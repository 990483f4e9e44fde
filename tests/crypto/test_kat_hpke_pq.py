"""Known-answer tests: the hpke-pq (draft-ietf-hpke-pq) vectors through pyca/cryptography's HPKE.

qward's default KEM suite wraps data keys with HPKE over the hybrid ML-KEM-768 + X25519 KEM (HPKE
KEM id 0x647a, "MLKEM768-X25519", the X-Wing construction), HKDF-SHA256 (KDF id 0x0001) and
AES-256-GCM (AEAD id 0x0002); see ``qward.crypto.envelope.hpke_suite``. These tests import each
vector's recipient key into pyca, check it reproduces the vector's public key, and open the
vector's first encryption. A successful open pins pyca's KEM, KDF and AEAD to the vector's ids,
because HPKE mixes all three into the key schedule. qward's suites are then pinned to the same
pyca objects: by name and behaviour for the hybrid suite, and by opening the vector itself with
``hpke_suite(suite)`` wherever hpke-pq has a vector for exactly one of qward's suites.

The hpke-pq file has no vector for exactly (0x647a, 0x0001, 0x0002): its MLKEM768-X25519 vectors
use ChaCha20-Poly1305, so the ids are pinned one by one by vectors that share them. Where the
vectors come from, and their SHA-256 digests, are in ``vectors/PROVENANCE.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from qward.crypto.envelope import hpke_info, hpke_suite, parse_key_wrap, wrap_data_key
from qward.crypto.keys import HPKERecipientKey
from qward.suites import KEM_SUITES, MLKEM768_X25519_HKDF_SHA256_AES_256_GCM

VECTORS = Path(__file__).parent / "vectors"
FILE = "hpke-pq/test-vectors.json"

XWING = 0x647A
QWARD_IDS = (XWING, 0x0001, 0x0002)

# pyca's single-shot HPKE API takes no AAD, and every vector encryption carries one ("Count-i").
# This is pyca's own AAD-taking entry point (declared in its type stub, bindings/_rust/openssl/
# hpke.pyi): the same Rust code as Suite.decrypt with the AAD passed through.
_decrypt_with_aad = rust_openssl.hpke._decrypt_with_aad

PrivateKey = Any  # the union pyca's Suite.decrypt accepts


def _provenance_digests() -> dict[str, str]:
    """The ``| `file` | `sha256` |`` rows of PROVENANCE.md's checksum table."""
    text = (VECTORS / "PROVENANCE.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([\w./-]+\.json)` \| `([0-9a-f]{64})` \|", text, re.MULTILINE)
    return dict(rows)


def _vectors() -> list[dict[str, Any]]:
    doc: list[dict[str, Any]] = json.loads((VECTORS / FILE).read_text(encoding="utf-8"))
    return doc


def _ids(vector: dict[str, Any]) -> tuple[int, int, int]:
    return vector["kem_id"], vector["kdf_id"], vector["aead_id"]


def _h(vector: dict[str, Any], key: str) -> bytes:
    return bytes.fromhex(vector[key])


# --- importing a vector's recipient key: (private key, SerializePublicKey of its public key) ----


def _xwing_parts(sk: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    # X-Wing / draft-irtf-cfrg-concrete-hybrid-kems MLKEM768-X25519: the 32-byte decapsulation
    # key expands with SHAKE256 into the ML-KEM-768 seed d||z (64 bytes) and the X25519 key (32).
    expanded = hashlib.shake_256(sk).digest(96)
    return (
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        x25519.X25519PrivateKey.from_private_bytes(expanded[64:]),
    )


def _xwing(sk: bytes) -> tuple[PrivateKey, bytes]:
    kem, xdh = _xwing_parts(sk)
    public = kem.public_key().public_bytes_raw() + xdh.public_key().public_bytes_raw()
    return hpke.MLKEM768X25519PrivateKey(kem, xdh), public


def _mlkem768(sk: bytes) -> tuple[PrivateKey, bytes]:
    key = mlkem.MLKEM768PrivateKey.from_seed_bytes(sk)
    return key, key.public_key().public_bytes_raw()


def _mlkem1024(sk: bytes) -> tuple[PrivateKey, bytes]:
    key = mlkem.MLKEM1024PrivateKey.from_seed_bytes(sk)
    return key, key.public_key().public_bytes_raw()


def _dhkem(curve: ec.EllipticCurve) -> Callable[[bytes], tuple[PrivateKey, bytes]]:
    # RFC 9180 section 7.1.2: a NIST-curve private key serializes as its big-endian scalar.
    def load(sk: bytes) -> tuple[PrivateKey, bytes]:
        key = ec.derive_private_key(int.from_bytes(sk, "big"), curve)
        point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return key, point

    return load


def _x25519(sk: bytes) -> tuple[PrivateKey, bytes]:
    key = x25519.X25519PrivateKey.from_private_bytes(sk)
    return key, key.public_key().public_bytes_raw()


_KEMS: dict[int, tuple[hpke.KEM, Callable[[bytes], tuple[PrivateKey, bytes]]]] = {
    0x0010: (hpke.KEM.P256, _dhkem(ec.SECP256R1())),
    0x0011: (hpke.KEM.P384, _dhkem(ec.SECP384R1())),
    0x0020: (hpke.KEM.X25519, _x25519),
    0x0041: (hpke.KEM.MLKEM768, _mlkem768),
    0x0042: (hpke.KEM.MLKEM1024, _mlkem1024),
    XWING: (hpke.KEM.MLKEM768_X25519, _xwing),
}
_KDFS = {
    0x0001: hpke.KDF.HKDF_SHA256,
    0x0002: hpke.KDF.HKDF_SHA384,
    0x0003: hpke.KDF.HKDF_SHA512,
    0x0010: hpke.KDF.SHAKE128,
    0x0011: hpke.KDF.SHAKE256,
}
_AEADS = {
    0x0001: hpke.AEAD.AES_128_GCM,
    0x0002: hpke.AEAD.AES_256_GCM,
    0x0003: hpke.AEAD.CHACHA20_POLY1305,
}

# Every vector pyca cannot run, and why; a test keeps this table equal to the file's contents.
_NOT_EXERCISED = {
    (0x0040, 0x0001, 0x0001): "ML-KEM-512: pyca has no HPKE KEM for it",
    (0x0050, 0x0001, 0x0001): "MLKEM768-P256: pyca has no HPKE KEM for it",
    (0x0050, 0x0010, 0x0002): "MLKEM768-P256: pyca has no HPKE KEM for it",
    (0x0051, 0x0002, 0x0002): (
        "MLKEM1024-P384: importing the 32-byte seed needs the draft's P-384 scalar derivation, "
        "which pyca does not expose; not qward's suite"
    ),
    (0x0020, 0x0012, 0x0003): "TurboSHAKE128 KDF: not in pyca",
    (0x0021, 0x0013, 0x0003): "DHKEM(X448) and TurboSHAKE256 KDF: not in pyca",
    (0x0042, 0x0013, 0x0001): "TurboSHAKE256 KDF: not in pyca",
}


def _runnable(vector: dict[str, Any]) -> bool:
    kem, kdf, aead = _ids(vector)
    return kem in _KEMS and kdf in _KDFS and aead in _AEADS


def _suite(vector: dict[str, Any]) -> hpke.Suite:
    kem, kdf, aead = _ids(vector)
    return hpke.Suite(_KEMS[kem][0], _KDFS[kdf], _AEADS[aead])


def _recipient(vector: dict[str, Any]) -> tuple[PrivateKey, bytes]:
    return _KEMS[vector["kem_id"]][1](_h(vector, "skRm"))


def _vid(vector: dict[str, Any]) -> str:
    return "kem{:04x}-kdf{:04x}-aead{:04x}".format(*_ids(vector))


def _params(vectors: list[dict[str, Any]]) -> list[Any]:
    return [pytest.param(v, id=_vid(v)) for v in vectors]


RUNNABLE_VECTORS = [v for v in _vectors() if _runnable(v)]
ALL = _params(_vectors())
RUNNABLE = _params(RUNNABLE_VECTORS)
XWING_VECTORS = _params([v for v in _vectors() if v["kem_id"] == XWING])


# --- the stored file ----------------------------------------------------------------------


def test_vector_file_matches_provenance_digest() -> None:
    recorded = _provenance_digests().get(FILE)
    assert recorded is not None, f"{FILE} is not listed in PROVENANCE.md"
    assert hashlib.sha256((VECTORS / FILE).read_bytes()).hexdigest() == recorded


def test_vectors_pyca_cannot_run_are_the_listed_ones() -> None:
    skipped = [_ids(v) for v in _vectors() if not _runnable(v)]
    assert sorted(skipped) == sorted(_NOT_EXERCISED)
    assert len(RUNNABLE) + len(skipped) == len(_vectors())


def test_report_vectors_pyca_cannot_run() -> None:
    reasons = sorted(set(_NOT_EXERCISED.values()))
    pytest.skip(f"{len(_NOT_EXERCISED)} of {len(ALL)} hpke-pq vectors: " + "; ".join(reasons))


@pytest.mark.parametrize("vector", ALL)
def test_suite_id_names_the_vector_algorithms(vector: dict[str, Any]) -> None:
    kem, kdf, aead = _ids(vector)
    assert vector["mode"] == 0  # the PQ KEMs have no auth modes; all vectors are base mode
    expected = b"HPKE" + kem.to_bytes(2, "big") + kdf.to_bytes(2, "big") + aead.to_bytes(2, "big")
    assert _h(vector, "suite_id") == expected


# --- every vector pyca can run ---------------------------------------------------------------


@pytest.mark.parametrize("vector", RUNNABLE)
def test_recipient_key_reproduces_vector_public_key(vector: dict[str, Any]) -> None:
    _, public = _recipient(vector)
    assert public == _h(vector, "pkRm")


@pytest.mark.parametrize("vector", RUNNABLE)
def test_open_first_encryption(vector: dict[str, Any]) -> None:
    key, _ = _recipient(vector)
    first = vector["encryptions"][0]
    sealed = _h(vector, "enc") + _h(first, "ct")
    opened = _decrypt_with_aad(
        _suite(vector), sealed, key, info=_h(vector, "info"), aad=_h(first, "aad")
    )
    assert opened == _h(first, "pt")


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize("vector", RUNNABLE)
def test_damaged_first_encryption_is_refused(vector: dict[str, Any]) -> None:
    key, _ = _recipient(vector)
    first = vector["encryptions"][0]
    enc, ct, info, aad = _h(vector, "enc"), _h(first, "ct"), _h(vector, "info"), _h(first, "aad")
    damaged = {
        "enc, first byte": (_flip(enc, 0) + ct, info, aad),
        "enc, last byte": (_flip(enc, len(enc) - 1) + ct, info, aad),
        "ciphertext": (enc + _flip(ct, 0), info, aad),
        "tag": (enc + _flip(ct, len(ct) - 1), info, aad),
        "info": (enc + ct, info + b"!", aad),
        "aad": (enc + ct, info, aad + b"!"),
        "truncated": ((enc + ct)[:-1], info, aad),
    }
    for what, (sealed, i, a) in damaged.items():
        with pytest.raises(InvalidTag):
            _decrypt_with_aad(_suite(vector), sealed, key, info=i, aad=a)
            pytest.fail(f"opened with damaged {what}")


def test_report_kinds_pyca_cannot_run() -> None:
    runnable = RUNNABLE_VECTORS
    later = sum(len(v["encryptions"]) - 1 for v in runnable)
    exports = sum(len(v["exports"]) for v in runnable)
    pytest.skip(
        f"in the {len(runnable)} runnable vectors: {later} encryptions at sequence numbers >= 1 "
        f"(pyca's HPKE is single-shot), {exports} exporter values (no exporter API), and "
        f"{len(runnable)} DeriveKeyPair(ikmR) / encapsulations from ikmE (no derandomized API)"
    )


# --- MLKEM768-X25519 (X-Wing), the KEM qward uses ----------------------------------------------


@pytest.mark.parametrize("vector", XWING_VECTORS)
def test_xwing_shared_secret_from_pyca_components(vector: dict[str, Any]) -> None:
    # draft-ietf-hpke-pq's MLKEM768-X25519 is X-Wing: ss = SHA3-256(ss_M || ss_X || ct_X || pk_X
    # || label). Recomputing the vector's shared secret from pyca's ML-KEM-768 decapsulation and
    # X25519 shows the draft's construction is the one pyca's MLKEM768_X25519 KEM opens.
    kem, xdh = _xwing_parts(_h(vector, "skRm"))
    enc = _h(vector, "enc")
    ct_m, ct_x = enc[:1088], enc[1088:]
    pk_x = xdh.public_key().public_bytes_raw()
    ss_m = kem.decapsulate(ct_m)
    ss_x = xdh.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    label = b"\\.//^\\"
    shared_secret = hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + label).digest()
    assert shared_secret == _h(vector, "shared_secret")


def test_runnable_vectors_pin_each_id_of_qward_suite() -> None:
    runnable = [_ids(v) for v in RUNNABLE_VECTORS]
    kem, kdf, aead = QWARD_IDS
    assert any(k == kem for k, _, _ in runnable), "no runnable vector for KEM 0x647a"
    assert any(f == kdf for _, f, _ in runnable), "no runnable vector for KDF 0x0001"
    assert any(a == aead for _, _, a in runnable), "no runnable vector for AEAD 0x0002"
    assert _KEMS[kem][0] == hpke.KEM.MLKEM768_X25519
    assert _KDFS[kdf] == hpke.KDF.HKDF_SHA256
    assert _AEADS[aead] == hpke.AEAD.AES_256_GCM


def _qward_suite_parts(
    name: str = MLKEM768_X25519_HKDF_SHA256_AES_256_GCM,
) -> tuple[hpke.KEM, hpke.KDF, hpke.AEAD]:
    """Split a qward KEM suite name into pyca's KEM, KDF and AEAD names, which it spells out."""
    kinds = (hpke.KEM, hpke.KDF, hpke.AEAD)
    names = {kind: [n for n in dir(kind) if n.isupper()] for kind in kinds}
    splits = [
        (k, f, a)
        for k in names[hpke.KEM]
        for f in names[hpke.KDF]
        for a in names[hpke.AEAD]
        if name == f"{k}_{f}_{a}"
    ]
    assert len(splits) == 1, splits
    k, f, a = splits[0]
    return getattr(hpke.KEM, k), getattr(hpke.KDF, f), getattr(hpke.AEAD, a)


def test_qward_suite_name_spells_the_vector_ids() -> None:
    kem, kdf, aead = _qward_suite_parts()
    assert (kem, kdf, aead) == (_KEMS[XWING][0], _KDFS[0x0001], _AEADS[0x0002])


@pytest.mark.parametrize("vector", XWING_VECTORS)
def test_qward_wraps_to_a_vector_key_under_exactly_its_suite(vector: dict[str, Any]) -> None:
    # qward's recipient key is the vector's public key split as SerializePublicKey lays it out
    # (ML-KEM-768 key, then X25519 key); qward's wrap must open with the vector's private key
    # under (MLKEM768_X25519, HKDF_SHA256, AES_256_GCM) and under no neighbouring suite.
    public = _h(vector, "pkRm")
    recipient = HPKERecipientKey(mlkem768=public[:1184], x25519=public[1184:])
    key, _ = _recipient(vector)
    header, dek = b'{"format":"kat"}', bytes(range(32))
    wrapped = parse_key_wrap(wrap_data_key(dek, recipient=recipient, header=header), what="kat")
    assert wrapped.suite == MLKEM768_X25519_HKDF_SHA256_AES_256_GCM
    kem, kdf, aead = _qward_suite_parts()
    info = hpke_info(header)
    assert hpke.Suite(kem, kdf, aead).decrypt(wrapped.encapsulated_key, key, info=info) == dek
    assert hpke_suite().decrypt(wrapped.encapsulated_key, key, info=info) == dek
    neighbours = [
        hpke.Suite(kem, kdf, hpke.AEAD.AES_128_GCM),
        hpke.Suite(kem, kdf, hpke.AEAD.CHACHA20_POLY1305),
        hpke.Suite(kem, hpke.KDF.HKDF_SHA384, aead),
        hpke.Suite(kem, hpke.KDF.SHAKE256, aead),
    ]
    for suite in neighbours:
        with pytest.raises(InvalidTag):
            suite.decrypt(wrapped.encapsulated_key, key, info=info)


def _vector_ids_of(suite: str) -> tuple[int, int, int]:
    kem, kdf, aead = _qward_suite_parts(suite)
    ids = (
        {pyca: i for i, (pyca, _) in _KEMS.items()}[kem],
        {pyca: i for i, pyca in _KDFS.items()}[kdf],
        {pyca: i for i, pyca in _AEADS.items()}[aead],
    )
    return ids


@pytest.mark.parametrize("suite", sorted(KEM_SUITES))
def test_qward_kem_suite_against_its_exact_vectors(suite: str) -> None:
    # Where hpke-pq has a vector for exactly one of qward's KEM suites, open it with the suite
    # object qward builds (qward.crypto.envelope.hpke_suite), not one assembled here.
    ids = _vector_ids_of(suite)
    exact = [v for v in _vectors() if _ids(v) == ids]
    if not exact:
        pytest.skip(
            "{}: no hpke-pq vector for exactly ({:#06x}, {:#06x}, {:#06x})".format(suite, *ids)
        )
    for vector in exact:
        key, public = _recipient(vector)
        assert public == _h(vector, "pkRm")
        first = vector["encryptions"][0]
        sealed = _h(vector, "enc") + _h(first, "ct")
        opened = _decrypt_with_aad(
            hpke_suite(suite), sealed, key, info=_h(vector, "info"), aad=_h(first, "aad")
        )
        assert opened == _h(first, "pt")
