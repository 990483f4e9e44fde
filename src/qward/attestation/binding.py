"""The key binding: what a core puts into its evidence so it names its keys and a fresh nonce.

``report_data(manifest, nonce)`` is SHA-512 over a domain label, the SHA-256 of the core's key
manifest (the canonical trust bundle: HPKE, receipt and checkpoint public keys) and the client's
nonce. It is 64 bytes, the size of SEV-SNP and TDX REPORT_DATA; Nitro carries it in ``user_data``
(and the nonce again in ``nonce``); a TPM quote carries its first 32 bytes as qualifying data,
because a TPM bounds ``extraData`` by its largest digest and SHA-256-only TPMs exist.
"""

from __future__ import annotations

import hashlib

from qward.errors import InputError

__all__ = ["BINDING_LABEL", "MAX_NONCE_BYTES", "MIN_NONCE_BYTES", "expected_field", "report_data"]

BINDING_LABEL = b"qward/attestation-binding/v1\x00"
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64


def report_data(manifest: bytes, nonce: bytes) -> bytes:
    """The 64 bytes that bind ``manifest`` (canonical trust bundle bytes) and ``nonce``."""
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise InputError(
            f"attestation nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes, "
            f"got {len(nonce)}"
        )
    return hashlib.sha512(BINDING_LABEL + hashlib.sha256(manifest).digest() + nonce).digest()


def expected_field(evidence_format: str, binding: bytes) -> bytes:
    """What ``Claims.report_data`` must equal for ``evidence_format`` given ``binding``."""
    return binding[:32] if evidence_format == "tpm" else binding
