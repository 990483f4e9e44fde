"""Named algorithm suites and the policies that pick among them.

Suite names spell the whole construction, so an artifact's suite id says exactly how to open or
verify it. Artifacts carry their suite id and key id; a verifier looks both up rather than assuming
a default, which is what lets a deployment move to stronger suites without breaking old evidence.

A ``SuitePolicy`` says which suites are *accepted* for new seals and new signatures, and which are
merely *readable*: old artifacts under a readable suite still open (so that ``rewrap`` can move
them forward), but nothing new is sealed or signed under it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qward.errors import CryptoError, FormatError

__all__ = [
    "DEFAULT_POLICY",
    "ED25519",
    "KEM_SUITES",
    "MLDSA44",
    "MLDSA65",
    "MLDSA65_ED25519",
    "MLDSA87",
    "MLKEM768_HKDF_SHA256_AES_256_GCM",
    "MLKEM768_X25519_HKDF_SHA256_AES_256_GCM",
    "MLKEM1024_HKDF_SHA384_AES_256_GCM",
    "NOTE_ED25519_MLDSA44",
    "SIGNATURE_SUITES",
    "X25519_HKDF_SHA256_AES_256_GCM",
    "Policy",
    "SuitePolicy",
    "require_suite",
    "suite_policy",
]

# -- key encapsulation suites: HPKE (RFC 9180) wraps a fresh 256-bit data key; the payload is
# -- sealed with AES-256-GCM under a key derived from it.

#: Classical: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
X25519_HKDF_SHA256_AES_256_GCM = "X25519_HKDF_SHA256_AES_256_GCM"
#: Hybrid: the ML-KEM-768 + X25519 KEM (X-Wing style), HKDF-SHA256, AES-256-GCM.
MLKEM768_X25519_HKDF_SHA256_AES_256_GCM = "MLKEM768_X25519_HKDF_SHA256_AES_256_GCM"
#: Post-quantum only: ML-KEM-768 (FIPS 203), HKDF-SHA256, AES-256-GCM.
MLKEM768_HKDF_SHA256_AES_256_GCM = "MLKEM768_HKDF_SHA256_AES_256_GCM"
#: CNSA 2.0 level: ML-KEM-1024, HKDF-SHA384, AES-256-GCM.
MLKEM1024_HKDF_SHA384_AES_256_GCM = "MLKEM1024_HKDF_SHA384_AES_256_GCM"

# -- signature suites

#: Hybrid signature: ML-DSA-65 (FIPS 204) and Ed25519 over the same message; both must verify.
MLDSA65_ED25519 = "MLDSA65_ED25519"
#: Single-algorithm signatures.
ED25519 = "ED25519"
MLDSA44 = "MLDSA44"
MLDSA65 = "MLDSA65"
MLDSA87 = "MLDSA87"
#: A C2SP signed note (log checkpoint) co-signed by an Ed25519 and an ML-DSA-44 key.
NOTE_ED25519_MLDSA44 = "NOTE_ED25519_MLDSA44"

KEM_SUITES = frozenset(
    {
        X25519_HKDF_SHA256_AES_256_GCM,
        MLKEM768_X25519_HKDF_SHA256_AES_256_GCM,
        MLKEM768_HKDF_SHA256_AES_256_GCM,
        MLKEM1024_HKDF_SHA384_AES_256_GCM,
    }
)
SIGNATURE_SUITES = frozenset({ED25519, MLDSA44, MLDSA65, MLDSA65_ED25519, MLDSA87})
_KNOWN = KEM_SUITES | SIGNATURE_SUITES | {NOTE_ED25519_MLDSA44}
_CLASSICAL = frozenset({X25519_HKDF_SHA256_AES_256_GCM, ED25519})


class Policy(enum.StrEnum):
    """The named policies a deployment chooses from; ``HYBRID`` is the default."""

    CLASSICAL = "classical"
    HYBRID = "hybrid"
    PQ_ONLY = "pq-only"
    CNSA = "cnsa"


@dataclass(frozen=True, kw_only=True)
class SuitePolicy:
    """Which suites a policy accepts for new seals and signatures, and which it can still read."""

    policy: Policy
    kem_suite: str
    signature_suite: str
    readable: frozenset[str]

    @property
    def accepted(self) -> frozenset[str]:
        """Suites accepted for new seals and new signatures."""
        return frozenset({self.kem_suite, self.signature_suite})

    def require_new(self, suite: str, *, what: str) -> str:
        """Return ``suite`` if new seals or signatures may use it; otherwise raise."""
        if suite not in self.accepted:
            raise CryptoError(
                f"{what}: suite {suite} is not accepted for new seals or signatures under "
                f"policy {self.policy.value!r} (accepted: {', '.join(sorted(self.accepted))})"
            )
        return suite

    def require_readable(self, suite: str, *, what: str) -> str:
        """Return ``suite`` if existing artifacts under it may still be opened or verified."""
        if suite not in self.readable:
            raise CryptoError(
                f"{what}: suite {suite} is not readable under policy {self.policy.value!r}"
            )
        return suite


# Every policy can still read what qward has written under the others, so that rewrap can move
# it forward; the post-quantum policies refuse purely classical artifacts even for reading, since
# their confidentiality already rests on an assumption those policies reject.
_POLICIES = {
    Policy.CLASSICAL: SuitePolicy(
        policy=Policy.CLASSICAL,
        kem_suite=X25519_HKDF_SHA256_AES_256_GCM,
        signature_suite=ED25519,
        readable=_KNOWN,
    ),
    Policy.HYBRID: SuitePolicy(
        policy=Policy.HYBRID,
        kem_suite=MLKEM768_X25519_HKDF_SHA256_AES_256_GCM,
        signature_suite=MLDSA65_ED25519,
        readable=_KNOWN,
    ),
    Policy.PQ_ONLY: SuitePolicy(
        policy=Policy.PQ_ONLY,
        kem_suite=MLKEM768_HKDF_SHA256_AES_256_GCM,
        signature_suite=MLDSA65,
        readable=_KNOWN - _CLASSICAL,
    ),
    Policy.CNSA: SuitePolicy(
        policy=Policy.CNSA,
        kem_suite=MLKEM1024_HKDF_SHA384_AES_256_GCM,
        signature_suite=MLDSA87,
        readable=_KNOWN - _CLASSICAL,
    ),
}

DEFAULT_POLICY = Policy.HYBRID


def suite_policy(policy: Policy | str) -> SuitePolicy:
    """The rules of a named policy; an unknown name is an ``InputError`` listing the known ones."""
    try:
        return _POLICIES[Policy(policy)]
    except ValueError:
        names = ", ".join(p.value for p in Policy)
        raise FormatError(f"unknown suite policy {policy!r}; known: {names}") from None


def require_suite(suite: object, *, expected: str | frozenset[str], what: str) -> str:
    """Return ``suite`` if it is (one of) ``expected``; otherwise raise naming what was found."""
    if not isinstance(suite, str):
        raise FormatError(f"{what}: suite id is missing")
    allowed = frozenset({expected}) if isinstance(expected, str) else expected
    if suite not in allowed:
        known = "known" if suite in _KNOWN else "unknown"
        raise FormatError(
            f"{what}: suite {suite!r} ({known}) is not accepted here; "
            f"need {' or '.join(sorted(allowed))}"
        )
    return suite
