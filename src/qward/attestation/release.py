"""Release entries: a release's reference measurements, published in a transparency log.

A verifier only accepts measurements that a release published, and a release is published by
appending its entry to a release log (a qward transparency log with its own checkpoint keys). What
the client keeps is a ``ReleaseStatement``: the entry, its index, an RFC 9162 inclusion proof and
the signed checkpoint it is proved against, so a policy can be checked offline and anyone can see
every release that was ever published (Apple's and Tinfoil's release logs work the same way).

A release entry (``qward/release/v1``) names the release version, the digest of the core's code
and locked environment (``qward.attestation.measurement``), and per evidence format the
measurements a verifier must see, in the names ``Claims.measurements`` uses (for example
``{"tpm": {"sha256:23": ...}, "sev-snp": {"measurement": ...}}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json, sha256_hex
from qward.errors import AttestationError, FormatError, VerificationError
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.merkle import leaf_hash, verify_inclusion
from qward.tlog.note import NoteVerifier, open_note_by_any_set

__all__ = [
    "RELEASE_FORMAT",
    "STATEMENT_FORMAT",
    "ReleaseEntry",
    "ReleaseStatement",
    "VerifiedRelease",
]

RELEASE_FORMAT = "qward/release/v1"
STATEMENT_FORMAT = "qward/release-statement/v1"
_MAX_STATEMENT_BYTES = 64 * 1024


def _hex_map(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise FormatError(f"release entry: {what} must be a non-empty object")
    for name, digest in value.items():
        if not isinstance(digest, str) or not digest or digest.strip("0123456789abcdef"):
            raise FormatError(f"release entry: {what}.{name} must be lower-case hex")
    return dict(value)


@dataclass(frozen=True, kw_only=True)
class ReleaseEntry:
    """One release's reference values."""

    version: str
    core_sha256: str
    platforms: dict[str, dict[str, str]]

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON object."""
        return {
            "format": RELEASE_FORMAT,
            "version": self.version,
            "core_sha256": self.core_sha256,
            "platforms": self.platforms,
        }

    def to_bytes(self) -> bytes:
        """The exact log entry bytes (canonical JSON)."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, doc: object) -> ReleaseEntry:
        """Strictly parse a release entry object."""
        if not isinstance(doc, dict) or doc.get("format") != RELEASE_FORMAT:
            raise FormatError("release entry: not a qward/release/v1 object")
        if set(doc) != {"format", "version", "core_sha256", "platforms"}:
            raise FormatError("release entry: expected format, version, core_sha256, platforms")
        version, core, platforms = doc["version"], doc["core_sha256"], doc["platforms"]
        if not isinstance(version, str) or not version:
            raise FormatError("release entry: version must be a non-empty string")
        if not isinstance(core, str) or len(core) != 64 or core.strip("0123456789abcdef"):
            raise FormatError("release entry: core_sha256 must be a SHA-256 hex digest")
        if not isinstance(platforms, dict) or not platforms:
            raise FormatError("release entry: platforms must be a non-empty object")
        return cls(
            version=version,
            core_sha256=core,
            platforms={str(k): _hex_map(v, f"platforms.{k}") for k, v in platforms.items()},
        )


@dataclass(frozen=True, kw_only=True)
class VerifiedRelease:
    """A release entry proved to be in the release log, and where."""

    entry: ReleaseEntry
    origin: str
    index: int
    entry_sha256: str


@dataclass(frozen=True, kw_only=True)
class ReleaseStatement:
    """A release entry with the proof that the release log holds it."""

    entry: ReleaseEntry
    index: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: bytes

    def to_json(self) -> dict[str, Any]:
        """The statement as a JSON object."""
        return {
            "format": STATEMENT_FORMAT,
            "entry": self.entry.to_json(),
            "log": {
                "index": self.index,
                "inclusion_proof": [b64encode(h) for h in self.inclusion_proof],
                "checkpoint": self.checkpoint.decode("utf-8"),
            },
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON encoding."""
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, doc: object) -> ReleaseStatement:
        """Strictly parse a statement object."""
        if not isinstance(doc, dict) or doc.get("format") != STATEMENT_FORMAT:
            raise FormatError("release statement: not a qward/release-statement/v1 object")
        log = doc.get("log")
        if not isinstance(log, dict) or set(log) != {"index", "inclusion_proof", "checkpoint"}:
            raise FormatError("release statement: log must hold index, inclusion_proof, checkpoint")
        index, proof, note = log["index"], log["inclusion_proof"], log["checkpoint"]
        if type(index) is not int or index < 0:
            raise FormatError("release statement: log.index must be a non-negative integer")
        if not isinstance(proof, list) or len(proof) > 64 or not isinstance(note, str):
            raise FormatError("release statement: inclusion_proof or checkpoint is malformed")
        hashes = tuple(b64decode(h, what="release inclusion proof") for h in proof)
        return cls(
            entry=ReleaseEntry.from_json(doc.get("entry")),
            index=index,
            inclusion_proof=hashes,
            checkpoint=note.encode("utf-8"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReleaseStatement:
        """Strictly parse a canonical JSON statement, through a size limit."""
        if len(data) > _MAX_STATEMENT_BYTES:
            raise FormatError("release statement is over the size limit")
        return cls.from_json(parse_canonical_json(data, what="release statement"))

    def verify(
        self, *, origin: str, key_sets: tuple[tuple[NoteVerifier, ...], ...]
    ) -> VerifiedRelease:
        """Check that the release log ``origin``, signed by one of ``key_sets``, holds the entry.

        1. The checkpoint note is signed by every key of one pinned key set.
        2. Its origin is the pinned release log's.
        3. The entry's RFC 9162 inclusion proof leads to the checkpoint's root.
        """
        try:
            text, _ = open_note_by_any_set(self.checkpoint, key_sets)
            checkpoint = Checkpoint.from_body(text)
            if checkpoint.origin != origin:
                raise VerificationError(
                    f"checkpoint is from log {checkpoint.origin!r}, not {origin!r}"
                )
            entry = self.entry.to_bytes()
            verify_inclusion(
                leaf_hash=leaf_hash(entry),
                index=self.index,
                size=checkpoint.size,
                proof=self.inclusion_proof,
                root=checkpoint.root_hash,
            )
        except (VerificationError, FormatError) as exc:
            raise AttestationError(
                f"release {self.entry.version} is not proved to be in the release log: {exc}",
                check="release-log",
            ) from None
        return VerifiedRelease(
            entry=self.entry, origin=origin, index=self.index, entry_sha256=sha256_hex(entry)
        )
