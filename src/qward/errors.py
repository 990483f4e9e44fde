"""qward's error hierarchy.

Every failure qward reports is a ``QwardError``; the CLI and the HTTP layer are the only places that
catch it wholesale, mapping each family to an exit code or an HTTP status::

    QwardError
    ├── InputError               bad input: malformed file, wrong shape, over a size limit
    │   ├── FormatError          an artifact (sealed blob, receipt, note, trust) does not parse
    │   └── NotFoundError        the named model, entry or tile does not exist (yet)
    ├── CryptoError              a cryptographic operation failed
    │   ├── DecryptionError      authentication failed while opening a sealed artifact
    │   └── UnknownKeyError      an artifact names a key id nobody trusts or holds
    ├── VerificationError        evidence does not check out (signature, proof, digest, checkpoint)
    │   ├── SignatureError
    │   ├── ProofError
    │   ├── LogInconsistencyError  carries both checkpoints and the proof as evidence
    │   ├── AttestationError     hardware evidence or its appraisal failed; names the check
    │   └── ReplayMismatchError  a replay produced different bytes than the receipt records
    ├── AuditError               the log refused or failed an append; nothing executes (fail closed)
    ├── RuntimeFailure           the sandboxed worker failed or was killed
    ├── CoreUnavailableError     the protected core cannot be reached
    └── KeystoreError            the keystore is missing, locked or damaged

Messages name what is wrong and never include secret material.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "AuditError",
    "CoreUnavailableError",
    "CryptoError",
    "DecryptionError",
    "FencedError",
    "FormatError",
    "InputError",
    "KeystoreError",
    "LogInconsistencyError",
    "NotFoundError",
    "ProofError",
    "QwardError",
    "ReplayMismatchError",
    "RuntimeFailure",
    "SignatureError",
    "UnknownKeyError",
    "VerificationError",
]


class QwardError(Exception):
    """Root of every error qward raises on purpose."""

    #: Stable machine-readable code, sent over the wire and printed by the CLI.
    code = "qward_error"


class InputError(QwardError):
    """A caller supplied something qward cannot accept."""

    code = "invalid_input"


class FormatError(InputError):
    """An artifact is malformed, truncated, non-canonical or of an unknown version."""

    code = "bad_format"


class NotFoundError(InputError):
    """The named model, log entry or tile does not exist, or not yet."""

    code = "not_found"


class CryptoError(QwardError):
    """A cryptographic operation failed."""

    code = "crypto_error"


class DecryptionError(CryptoError):
    """A sealed artifact failed authentication: wrong key, wrong suite or modified bytes."""

    code = "decryption_failed"


class UnknownKeyError(CryptoError):
    """An artifact names a key id that is not held or not trusted."""

    code = "unknown_key"


class VerificationError(QwardError):
    """Evidence failed to verify."""

    code = "verification_failed"


class SignatureError(VerificationError):
    """A signature did not verify under the trusted key."""

    code = "bad_signature"


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof did not verify."""

    code = "bad_proof"


class LogInconsistencyError(VerificationError):
    """Two checkpoints of one log cannot both be honest; both are kept as evidence."""

    code = "log_inconsistent"

    def __init__(self, message: str, *, older: bytes, newer: bytes, proof: tuple[bytes, ...]):
        super().__init__(message)
        self.older = older
        self.newer = newer
        self.proof = proof


class AttestationError(VerificationError):
    """Attestation evidence did not verify, or its appraisal refused it.

    ``check`` names the check that failed (for example ``"vcek-signature"``,
    ``"report-data"``, ``"debug-policy"``), so callers and tests can tell failures apart.
    """

    code = "attestation_failed"

    def __init__(self, message: str, *, check: str = "") -> None:
        # Rebuilt from a wire reply, the message already starts with its check's name.
        super().__init__(f"{check}: {message}" if check else message)
        self.check = check or message.partition(":")[0]


class ReplayMismatchError(VerificationError):
    """A replay produced outputs that differ from the receipt.

    The core logged the verdict all the same: ``verdict_document`` is its replay-verdict
    document (empty when the error did not come from a logged replay).
    """

    code = "replay_mismatch"

    def __init__(self, message: str, *, verdict_document: bytes = b"") -> None:
        super().__init__(message)
        self.verdict_document = verdict_document


class AuditError(QwardError):
    """The transparency log could not record an event, so the action was refused."""

    code = "audit_unavailable"


class FencedError(AuditError):
    """A core tried to publish a checkpoint without holding the log's current publisher lease."""


class RuntimeFailure(QwardError):  # noqa: N818 - names the failure, not an exception kind
    """The sandboxed worker failed, timed out or was killed."""

    code = "runtime_failure"


class CoreUnavailableError(QwardError):
    """The protected core could not be reached or answered out of protocol."""

    code = "core_unavailable"


class KeystoreError(QwardError):
    """The keystore is missing, locked with another secret, or damaged."""

    code = "keystore_error"
