"""Named algorithm suites and the policy that picks among them.

Suite names spell the whole construction, so an artifact's suite id says exactly how to open or
verify it. Artifacts carry their suite id and key id; a verifier looks both up rather than assuming
a default, which is what lets a deployment move to stronger suites without breaking old evidence.
"""

from __future__ import annotations

import enum

from qward.errors import FormatError

__all__ = [
    "ED25519",
    "MLDSA44",
    "MLDSA65_ED25519",
    "MLKEM768_X25519_HKDF_SHA256_AES_256_GCM",
    "Policy",
    "require_suite",
]

#: HPKE (RFC 9180) with the hybrid ML-KEM-768 + X25519 KEM wraps a fresh 256-bit data key;
#: the payload is sealed with AES-256-GCM under a key derived from it.
MLKEM768_X25519_HKDF_SHA256_AES_256_GCM = "MLKEM768_X25519_HKDF_SHA256_AES_256_GCM"

#: Hybrid signature: ML-DSA-65 (FIPS 204) and Ed25519 over the same message; both must verify.
MLDSA65_ED25519 = "MLDSA65_ED25519"

#: Signed-note signature algorithms used on log checkpoints.
ED25519 = "ED25519"
MLDSA44 = "MLDSA44"

_KNOWN = {MLKEM768_X25519_HKDF_SHA256_AES_256_GCM, MLDSA65_ED25519, ED25519, MLDSA44}


class Policy(enum.StrEnum):
    """Which suites a deployment accepts; ``HYBRID`` is the default and the only one so far."""

    HYBRID = "hybrid"


def require_suite(suite: object, *, expected: str, what: str) -> str:
    """Return ``suite`` if it equals ``expected``; otherwise raise naming what was found."""
    if not isinstance(suite, str):
        raise FormatError(f"{what}: suite id is missing")
    if suite != expected:
        known = "known" if suite in _KNOWN else "unknown"
        raise FormatError(
            f"{what}: suite {suite!r} ({known}) is not accepted here; need {expected}"
        )
    return suite
