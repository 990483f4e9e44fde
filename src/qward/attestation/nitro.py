"""AWS Nitro Enclaves attestation documents: COSE_Sign1 over CBOR, chained to AWS's root.

The steps follow AWS's "Nitro Enclaves Attestation Process" (aws/aws-nitro-enclaves-nsm-api,
``docs/attestation_process.md``), section by section:

1. §3.1 COSE: a (possibly tag-18) 4-element ``COSE_Sign1`` array; the protected header is a
   serialized map whose algorithm (label 1) is ES384 (-35).
2. §3.2.2 syntax: the payload is a CBOR map with exactly the allowed keys, each of its type and
   size (§2.2 and §3.2.2.2).
3. §3.2.3 chain: ``cabundle[0]`` is the pinned root (compared as DER), then each certificate is
   signed by the one before it, ending in ``certificate``; every certificate, root included, is
   valid at ``now`` (§3.2.3.1); basic constraints and key usage fit each position (§3.2.3.2-3).
4. §3.2.1 signature: ECDSA P-384 with SHA-384 by ``certificate``'s key over the COSE
   ``Sig_structure`` ``["Signature1", protected, b"", payload]`` (RFC 9052 §4.4).

Only then are the claims read. Two limits differ inside AWS's document: §2.2 bounds ``user_data``
and ``nonce`` by 1024 bytes, §3.2.2.2 by 512; real AWS-signed documents carry 1024-byte values
(see ``tests/attestation/data``), so 1024 is the limit here.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA384

from qward.attestation import _x509_path as path
from qward.attestation.evidence import MAX_EVIDENCE_BYTES, Claims, Evidence
from qward.errors import AttestationError, InputError

__all__ = ["AWS_NITRO_ROOT_G1", "COSE_ALG_ES384", "NitroVerifier", "parse_document"]

#: The file under ``roots/`` holding AWS's commercial-partition root (provenance in its README).
AWS_NITRO_ROOT_G1 = "aws_nitro_root_g1.pem"
COSE_ALG_ES384 = -35
_COSE_SIGN1_TAG = 18
_ALLOWED = frozenset(
    {"module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"}
    | {"public_key", "user_data", "nonce"}
)
_MAX_USER_BYTES = 1024
_MAX_CERT_BYTES = 1024
_MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, so datetime cannot overflow
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# CBOR decoding of untrusted bytes: cbor2 reports malformed input with these.
_CBOR_ERRORS = (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError)


def _fail(check: str, message: str) -> AttestationError:
    return AttestationError(message, check=check)


def _cbor(data: bytes, *, check: str, what: str) -> Any:
    """Decode exactly one definite-length CBOR item with no duplicate keys and no trailing bytes."""
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        stream, read_size=1, max_depth=8, allow_indefinite=False, allow_duplicate_keys=False
    )
    try:
        item = decoder.decode()
    except _CBOR_ERRORS:
        raise _fail(check, f"{what} is not well-formed CBOR") from None
    if stream.tell() != len(data):
        raise _fail(check, f"{what} has {len(data) - stream.tell()} trailing bytes")
    return item


def _cose_sign1(report: bytes) -> tuple[bytes, bytes, bytes]:
    """Step 1: (protected, payload, signature) of the ``COSE_Sign1`` in ``report``."""
    if len(report) > MAX_EVIDENCE_BYTES:
        raise _fail("nitro-cose", f"document is over the {MAX_EVIDENCE_BYTES}-byte limit")
    outer = _cbor(report, check="nitro-cose", what="the document")
    if isinstance(outer, cbor2.CBORTag):
        if outer.tag != _COSE_SIGN1_TAG:
            raise _fail("nitro-cose", f"CBOR tag {outer.tag} is not COSE_Sign1 (18)")
        outer = outer.value
    if not isinstance(outer, list | tuple) or len(outer) != 4:
        raise _fail("nitro-cose", "COSE_Sign1 must be a 4-element array")
    protected, unprotected, payload, signature = outer
    if not (isinstance(protected, bytes) and isinstance(payload, bytes)):
        raise _fail("nitro-cose", "protected header and payload must be byte strings")
    if not isinstance(unprotected, Mapping) or not isinstance(signature, bytes):
        raise _fail("nitro-cose", "unprotected header must be a map, signature a byte string")
    header = _cbor(protected, check="nitro-cose", what="the protected header")
    if not isinstance(header, Mapping) or header.get(1) != COSE_ALG_ES384:
        raise _fail("nitro-algorithm", "protected header algorithm must be ES384 (-35)")
    if len(signature) != 96:
        raise _fail("nitro-cose", f"an ES384 signature is 96 bytes, got {len(signature)}")
    return protected, payload, signature


def _bytes_field(doc: Mapping[str, Any], key: str, low: int, high: int) -> bytes | None:
    value = doc.get(key)
    if value is None and key not in doc:
        return None
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        raise _fail("nitro-payload", f"{key} must be a byte string of {low} to {high} bytes")
    return value


def _pcrs(value: object) -> dict[int, bytes]:
    if not isinstance(value, Mapping) or not 1 <= len(value) <= 32:
        raise _fail("nitro-payload", "pcrs must be a map of 1 to 32 entries")
    pcrs: dict[int, bytes] = {}
    for index, pcr in value.items():
        if type(index) is not int or not 0 <= index < 32:
            raise _fail("nitro-payload", "PCR indices must be integers in [0, 32)")
        if not isinstance(pcr, bytes) or len(pcr) not in (32, 48, 64):
            raise _fail("nitro-payload", f"PCR{index} must be 32, 48 or 64 bytes")
        pcrs[index] = pcr
    return pcrs


def parse_document(payload: bytes) -> dict[str, Any]:
    """Step 2: the attestation document fields, checked against AWS's §3.2.2 rules."""
    doc = _cbor(payload, check="nitro-payload", what="the payload")
    if not isinstance(doc, Mapping) or not all(isinstance(k, str) for k in doc):
        raise _fail("nitro-payload", "the payload must be a map with text keys")
    unknown = set(doc) - _ALLOWED
    missing = {"module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"} - set(doc)
    if unknown or missing:
        raise _fail("nitro-payload", f"unknown fields {sorted(unknown)}, missing {sorted(missing)}")
    module_id, digest, timestamp = doc["module_id"], doc["digest"], doc["timestamp"]
    if not isinstance(module_id, str) or not module_id:
        raise _fail("nitro-payload", "module_id must be non-empty text")
    if digest != "SHA384":
        raise _fail("nitro-payload", 'digest must be "SHA384"')
    if type(timestamp) is not int or not 0 < timestamp <= _MAX_TIMESTAMP_MS:
        raise _fail("nitro-payload", "timestamp must be a positive integer of milliseconds")
    cabundle = doc["cabundle"]
    if not isinstance(cabundle, list | tuple) or not 1 <= len(cabundle) <= 8:
        raise _fail("nitro-payload", "cabundle must be an array of 1 to 8 certificates")
    certs = [_bytes_field({"cabundle": c}, "cabundle", 1, _MAX_CERT_BYTES) for c in cabundle]
    return {
        "module_id": module_id,
        "timestamp": timestamp,
        "pcrs": _pcrs(doc["pcrs"]),
        "certificate": _bytes_field(doc, "certificate", 1, _MAX_CERT_BYTES),
        "cabundle": certs,
        "public_key": _bytes_field(doc, "public_key", 1, _MAX_USER_BYTES),
        "user_data": _bytes_field(doc, "user_data", 0, _MAX_USER_BYTES),
        "nonce": _bytes_field(doc, "nonce", 0, _MAX_USER_BYTES),
    }


class NitroVerifier:
    """Verifies AWS Nitro Enclaves attestation documents against a pinned AWS root."""

    format = "nitro"

    def __init__(self, *, roots: tuple[x509.Certificate, ...] | None = None) -> None:
        self._roots = roots if roots is not None else (path.load_pinned_root(AWS_NITRO_ROOT_G1),)
        self._root_ders = frozenset(path.der(r) for r in self._roots)

    def verify(self, evidence: Evidence, *, now: datetime) -> Claims:
        """The claims a Nitro attestation document proves at ``now``, or ``AttestationError``."""
        if now.tzinfo is None:
            raise InputError("attestation: now must be timezone-aware")
        if evidence.format != self.format:
            raise _fail("format", f"evidence is {evidence.format!r}, not 'nitro'")
        protected, payload, signature = _cose_sign1(evidence.report)
        doc = parse_document(payload)
        leaf = self._check_chain(doc["cabundle"], doc["certificate"], now)
        self._check_signature(leaf, protected, payload, signature)
        return _claims(doc)

    def _check_chain(
        self, cabundle: list[bytes], certificate: bytes, now: datetime
    ) -> x509.Certificate:
        """Step 3: root pinned by DER, each link signed, all valid at ``now``, constraints."""
        if cabundle[0] not in self._root_ders:
            raise _fail("nitro-root", "cabundle[0] is not the pinned AWS Nitro Enclaves root")
        chain = [path.load_der(c, check="nitro-chain", what="a cabundle entry") for c in cabundle]
        chain.append(path.load_der(certificate, check="nitro-chain", what="the certificate"))
        for issuer, cert in pairwise(chain):
            path.check_issued_by(cert, issuer, check="nitro-chain")
        path.check_validity(chain, now.astimezone(UTC), check="nitro-certificate-validity")
        cas = len(cabundle)
        for position, ca in enumerate(chain[:cas]):
            path.check_ca(ca, below=cas - 1 - position, check="nitro-certificate-constraints")
        path.check_signing_leaf(chain[-1], check="nitro-certificate-constraints")
        return chain[-1]

    @staticmethod
    def _check_signature(
        leaf: x509.Certificate, protected: bytes, payload: bytes, signature: bytes
    ) -> None:
        """Step 4: ES384 over the COSE Sig_structure, by the leaf certificate's key."""
        key = leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            raise _fail("nitro-signature", "the signing certificate's key is not ECDSA P-384")
        to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
        # COSE carries r || s (RFC 9053 §2.1); pyca takes the DER encoding of the pair.
        r = int.from_bytes(signature[:48], "big")
        s = int.from_bytes(signature[48:], "big")
        try:
            key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(SHA384()))
        except InvalidSignature:
            raise _fail("nitro-signature", "COSE_Sign1 signature does not verify") from None


def _claims(doc: dict[str, Any]) -> Claims:
    pcrs: dict[int, bytes] = doc["pcrs"]
    # AWS Nitro Enclaves User Guide, "Cryptographic attestation": an enclave started in debug
    # mode gets PCRs made of zeros, so zero PCR0..PCR2 (image, kernel, application) mean debug.
    debug = all(not any(pcrs.get(i, b"")) for i in (0, 1, 2))
    platform = {"module_id": doc["module_id"]}
    if doc["public_key"] is not None:
        platform["public_key"] = doc["public_key"].hex()
    return Claims(
        format="nitro",
        measurements={f"pcr{i}": pcrs[i].hex() for i in sorted(pcrs) if any(pcrs[i])},
        report_data=doc["user_data"] or b"",
        debug=debug,
        platform=platform,
        nonce=doc["nonce"],
        issued_at=_EPOCH + timedelta(milliseconds=doc["timestamp"]),
    )
