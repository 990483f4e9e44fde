"""Known-answer tests: Wycheproof ML-KEM-768 and ML-DSA-65 vectors through pyca/cryptography.

Every stored vector runs through the pyca/cryptography calls qward makes (seed import, public key
import and encoding, decapsulation, verification with a FIPS 204 context) and, where qward wraps
them, through qward's own key types. Each vector's ``result`` decides the outcome: a valid vector
must produce the vector's outputs, an invalid one must fail at the step its flags or comment name,
with the exception pyca documents for that step.

Where the vectors come from, how the stored files were cut from the originals and their SHA-256
digests are in ``vectors/PROVENANCE.md``. Kinds of vector that pyca's API cannot run (encapsulation
with given randomness, deterministic signing) are reported as skipped tests, with counts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_private_key,
    load_der_public_key,
)

from qward.crypto.keys import HPKERecipientKey, ReceiptVerifyKey
from qward.errors import FormatError
from qward.suites import MLDSA65, MLDSA65_ED25519

VECTORS = Path(__file__).parent / "vectors"
WYCHEPROOF = VECTORS / "wycheproof"

# Fixed, valid partner keys for qward's hybrid key types, whose other half is the vector's key.
# They are filler, not test data: only the ML-KEM / ML-DSA half is under test.
_X25519_FILLER = (
    x25519.X25519PrivateKey.from_private_bytes(bytes(range(32)))
    .public_key()
    .public_bytes(Encoding.Raw, PublicFormat.Raw)
)
_ED25519_FILLER = (
    ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    .public_key()
    .public_bytes(Encoding.Raw, PublicFormat.Raw)
)


def _provenance_digests() -> dict[str, str]:
    """The ``| `file` | `sha256` |`` rows of PROVENANCE.md's checksum table."""
    text = (VECTORS / "PROVENANCE.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([\w./-]+\.json)` \| `([0-9a-f]{64})` \|", text, re.MULTILINE)
    return dict(rows)


@dataclass(frozen=True)
class Case:
    """One Wycheproof test with its group."""

    file: str
    group: dict[str, Any]
    test: dict[str, Any]

    @property
    def result(self) -> str:
        return str(self.test["result"])

    @property
    def flags(self) -> frozenset[str]:
        return frozenset(self.test.get("flags", []))

    def hex(self, key: str) -> bytes:
        """A hex field of the test, falling back to the group (keys live on groups)."""
        source = self.test if key in self.test else self.group
        return bytes.fromhex(source[key])


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((WYCHEPROOF / name).read_text(encoding="utf-8"))
    return doc


def _cases(name: str) -> Iterator[Case]:
    for group in _load(name)["testGroups"]:
        for test in group["tests"]:
            # No stored vector is "acceptable"; if a refresh brings one, its flags need a
            # decision here rather than a silent pass either way.
            assert test["result"] in ("valid", "invalid"), f"{name} tcId {test['tcId']}"
            yield Case(name, group, test)


def _params(name: str) -> list[Any]:
    return [pytest.param(c, id=f"tc{c.test['tcId']}-{c.result}") for c in _cases(name)]


MLKEM = "mlkem_768_test.json"
MLKEM_ENCAPS = "mlkem_768_encaps_test.json"
MLDSA_SIGN = "mldsa_65_sign_seed_test.json"
MLDSA_VERIFY = "mldsa_65_verify_test.json"
FILES = (MLKEM, MLKEM_ENCAPS, MLDSA_SIGN, MLDSA_VERIFY)


# --- the stored files themselves --------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_vector_file_matches_provenance_digest(name: str) -> None:
    recorded = _provenance_digests().get(f"wycheproof/{name}")
    assert recorded is not None, f"{name} is not listed in PROVENANCE.md"
    assert hashlib.sha256((WYCHEPROOF / name).read_bytes()).hexdigest() == recorded


def test_every_stored_wycheproof_file_is_tested() -> None:
    assert {p.name for p in WYCHEPROOF.glob("*.json")} == set(FILES)


@pytest.mark.parametrize(
    ("name", "algorithm", "parameter_set"),
    [
        (MLKEM, "ML-KEM", "ML-KEM-768"),
        (MLKEM_ENCAPS, "ML-KEM", "ML-KEM-768"),
        (MLDSA_SIGN, "ML-DSA-65", None),
        (MLDSA_VERIFY, "ML-DSA-65", None),
    ],
)
def test_vector_file_header(name: str, algorithm: str, parameter_set: str | None) -> None:
    doc = _load(name)
    assert doc["algorithm"] == algorithm
    assert doc["numberOfTests"] == sum(len(g["tests"]) for g in doc["testGroups"]) > 0
    if parameter_set is not None:
        assert {g["parameterSet"] for g in doc["testGroups"]} == {parameter_set}


# --- ML-KEM-768: seed import, public key encoding, decapsulation ------------------------------

# The FIPS 203 group of mlkem_768_test.json marks its invalid vectors by comment only (no flags);
# each names the input that must be refused.
_MLKEM_INVALID_INPUT = {
    "Private key too short": "seed",
    "Private key too long": "seed",
    "Ciphertext too short": "ciphertext",
    "Ciphertext too long": "ciphertext",
}


@pytest.mark.parametrize("case", _params(MLKEM))
def test_mlkem768_keygen_and_decapsulation(case: Case) -> None:
    seed, ciphertext = case.hex("seed"), case.hex("c")
    if case.result == "invalid":
        bad_input = _MLKEM_INVALID_INPUT[case.test["comment"]]
        if bad_input == "seed":
            with pytest.raises(ValueError, match="seed is 64 bytes"):
                mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
            return
        key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        with pytest.raises(ValueError, match="ciphertext"):
            key.decapsulate(ciphertext)
        return
    key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    # qward's keystore holds the 64-byte d||z seed and re-derives the key from it.
    assert key.private_bytes_raw() == seed
    if "ek" in case.test:
        ek = case.hex("ek")
        assert key.public_key().public_bytes_raw() == ek
        assert mlkem.MLKEM768PublicKey.from_public_bytes(ek) == key.public_key()
    # Valid vectors include implicit rejection (random and bit-flipped ciphertexts): the shared
    # secret must still be the vector's, not an error.
    assert key.decapsulate(ciphertext) == case.hex("K")


@pytest.mark.parametrize("case", _params(MLKEM_ENCAPS))
def test_mlkem768_encapsulation_key_import(case: Case) -> None:
    ek = case.hex("ek")
    if case.result == "invalid":
        # Wrong lengths and coefficients >= q (FIPS 203 section 7.2 modulus check) must both be
        # refused when the key is imported, by pyca and by qward's recipient key type. pyca
        # words both failures as a length error; the length shows which check fired.
        if "ModulusOverflow" in case.flags or case.test.get("comment") == "Public key not reduced":
            assert len(ek) == 1184
        with pytest.raises(ValueError):
            mlkem.MLKEM768PublicKey.from_public_bytes(ek)
        with pytest.raises(FormatError, match="HPKE recipient key"):
            HPKERecipientKey(mlkem768=ek, x25519=_X25519_FILLER).to_hpke()
        return
    assert mlkem.MLKEM768PublicKey.from_public_bytes(ek).public_bytes_raw() == ek
    recipient = HPKERecipientKey(mlkem768=ek, x25519=_X25519_FILLER)
    assert isinstance(recipient.to_hpke(), hpke.MLKEM768X25519PublicKey)


def test_mlkem768_encapsulation_with_given_randomness() -> None:
    # pyca's MLKEM768PublicKey.encapsulate() draws its own randomness and has no derandomized
    # variant, so the (m -> c, K) half of these vectors cannot be run; the key-import half is.
    count = sum(1 for c in _cases(MLKEM_ENCAPS) if c.result == "valid")
    pytest.skip(f"{count} ML-KEM-768 encapsulation KATs (m -> c, K): pyca has no derandomized API")


# --- ML-DSA-65: seed import, mu, verification -------------------------------------------------


def _context(case: Case) -> bytes | None:
    return case.hex("ctx") if "ctx" in case.test else None


def _mu(public_key: mldsa.MLDSA65PublicKey, case: Case) -> bytes:
    hasher = mldsa.MLDSAMuHasher(public_key, context=_context(case))
    hasher.update(case.hex("msg"))
    return hasher.finalize()


@pytest.mark.parametrize("case", _params(MLDSA_SIGN))
def test_mldsa65_sign_vectors(case: Case) -> None:
    seed = case.hex("privateSeed")
    if "IncorrectPrivateKeyLength" in case.flags:
        assert case.result == "invalid"
        with pytest.raises(ValueError, match="seed is 32 bytes"):
            mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        return
    key = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
    public = key.public_key()
    assert public.public_bytes_raw() == case.hex("publicKey")
    if "privateKeyPkcs8" in case.group:
        loaded = load_der_private_key(case.hex("privateKeyPkcs8"), password=None)
        assert isinstance(loaded, mldsa.MLDSA65PrivateKey)
        assert loaded.private_bytes_raw() == seed
    if case.result == "invalid":
        assert case.flags == {"InvalidContext"}
        with pytest.raises(ValueError, match="Context must be at most 255 bytes"):
            key.sign(case.hex("msg"), _context(case))
        with pytest.raises(ValueError, match="Context must be at most 255 bytes"):
            _mu(public, case)
        return
    sig = case.hex("sig")
    if "msg" in case.test:
        assert _mu(public, case) == case.hex("mu")
        public.verify(sig, case.hex("msg"), _context(case))
        # pyca signs hedged (fresh randomness), so its signature cannot equal the vector's; what
        # can be checked is that the seed-derived key signs what the vector's key verifies.
        public.verify(key.sign(case.hex("msg"), _context(case)), case.hex("msg"), _context(case))
    else:
        # NIST "Internal" vectors carry only mu (M' without message and context).
        assert "Internal" in case.flags
        public.verify_mu(sig, case.hex("mu"))
        public.verify_mu(key.sign_mu(case.hex("mu")), case.hex("mu"))


def test_mldsa65_deterministic_signing() -> None:
    # FIPS 204 deterministic signing (rnd = 0) and signing with a given rnd would reproduce the
    # vectors' signatures byte for byte, but pyca only signs hedged, with its own randomness.
    count = sum(1 for c in _cases(MLDSA_SIGN) if c.result == "valid")
    pytest.skip(f"{count} ML-DSA-65 signature-output KATs: pyca signs hedged only")


@pytest.mark.parametrize("case", _params(MLDSA_VERIFY))
def test_mldsa65_verify_vectors(case: Case) -> None:
    raw, der = case.hex("publicKey"), case.hex("publicKeyDer")
    if "IncorrectPublicKeyLength" in case.flags:
        assert case.result == "invalid"
        with pytest.raises(ValueError, match="public key is 1952 bytes"):
            mldsa.MLDSA65PublicKey.from_public_bytes(raw)
        with pytest.raises(ValueError):
            load_der_public_key(der)
        with pytest.raises(FormatError, match="wrong components"):
            ReceiptVerifyKey(
                suite=MLDSA65_ED25519, parts=(("mldsa65", raw), ("ed25519", _ED25519_FILLER))
            )
        with pytest.raises(FormatError, match="wrong components"):
            ReceiptVerifyKey(suite=MLDSA65, parts=(("mldsa65", raw),))
        return
    assert load_der_public_key(der) == mldsa.MLDSA65PublicKey.from_public_bytes(raw)
    # The key qward verifies receipts with: the ML-DSA-65 component of its hybrid key type.
    hybrid = (("mldsa65", raw), ("ed25519", _ED25519_FILLER))
    public = ReceiptVerifyKey(suite=MLDSA65_ED25519, parts=hybrid).components()["mldsa65"]
    assert isinstance(public, mldsa.MLDSA65PublicKey)
    sig, msg, ctx = case.hex("sig"), case.hex("msg"), _context(case)
    if case.result == "valid":
        public.verify(sig, msg, ctx)
    elif "InvalidContext" in case.flags:
        with pytest.raises(ValueError, match="Context must be at most 255 bytes"):
            public.verify(sig, msg, ctx)
    else:
        with pytest.raises(InvalidSignature):
            public.verify(sig, msg, ctx)
