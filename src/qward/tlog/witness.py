"""A transparency-log witness: c2sp.org/tlog-witness ``add-checkpoint``, with durable state.

A witness keeps, per log origin it knows, the latest checkpoint it cosigned. It cosigns a new
checkpoint only if the log signed it and it extends that checkpoint (an RFC 9162 consistency
proof), so no two clients can be shown different histories both cosigned by the same witness: a
forked checkpoint is refused (409 or 422) and kept as evidence. Checking the old size and storing
the new checkpoint happen in one ``BEGIN IMMEDIATE`` SQLite transaction, which is what the spec's
race (a smaller tree rolling back a larger one) requires; the state is durable (WAL,
``synchronous=FULL``) before the cosignature is returned.

This module holds the protocol logic and storage; the HTTP service and the witness's own keys are
in ``qward.witness``. ``parse_add_checkpoint`` and ``add_checkpoint_body`` are the wire format,
shared with the log side (``qward.tlog.witness_client``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from qward.encoding import b64decode, b64encode
from qward.errors import FormatError, ProofError, QwardError, SignatureError
from qward.tlog import merkle
from qward.tlog.backend import note_checkpoint
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.note import (
    MAX_NOTE_BYTES,
    MLDSA44NoteSigner,
    NoteSigner,
    NoteVerifier,
    open_note,
    signature_lines,
)

__all__ = [
    "MAX_BODY",
    "MAX_PROOF_LINES",
    "SIZE_CONTENT_TYPE",
    "AddCheckpoint",
    "Witness",
    "WitnessRefusedError",
    "add_checkpoint_body",
    "parse_add_checkpoint",
]

#: c2sp.org/tlog-witness: "The client MUST NOT send more than 63 consistency proof lines."
MAX_PROOF_LINES = 63
#: The media type of a 409 response body: the witness's latest cosigned size.
SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_BODY = MAX_NOTE_BYTES + (MAX_PROOF_LINES + 2) * 64


class WitnessRefusedError(QwardError):
    """The witness will not cosign; ``status`` is the HTTP status tlog-witness prescribes."""

    code = "witness_refused"

    def __init__(self, status: int, message: str, *, size: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        #: For 409 on an old-size mismatch: the witness's latest cosigned size.
        self.size = size


@dataclass(frozen=True, kw_only=True)
class AddCheckpoint:
    """One parsed ``add-checkpoint`` request."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes


def add_checkpoint_body(*, old_size: int, proof: Sequence[bytes], note: bytes) -> bytes:
    """The request body: ``old <size>``, one base64 proof hash a line, a blank line, the note."""
    lines = [b"old %d\n" % old_size, *(b64encode(h).encode() + b"\n" for h in proof)]
    return b"".join(lines) + b"\n" + note


def _decimal(text: str, what: str) -> int:
    # ASCII decimal without leading zeroes (c2sp.org/tlog-witness, "old size line").
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise FormatError(f"add-checkpoint: {what} {text!r} is not a canonical decimal")
    return int(text)


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse an ``add-checkpoint`` body strictly; malformed input is a ``FormatError`` (400)."""
    if len(body) > MAX_BODY:
        raise FormatError("add-checkpoint: request body is over the size limit")
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise FormatError("add-checkpoint: no blank line between the proof and the checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise FormatError("add-checkpoint: the old size and proof lines are not ASCII") from None
    if not lines[0].startswith("old "):
        raise FormatError("add-checkpoint: the first line is not 'old <size>'")
    old_size = _decimal(lines[0][4:], "old size")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise FormatError(f"add-checkpoint: more than {MAX_PROOF_LINES} consistency proof lines")
    proof = tuple(b64decode(line, what="consistency proof line") for line in lines[1:])
    if any(len(h) != merkle.HASH_SIZE for h in proof):
        raise FormatError("add-checkpoint: a consistency proof line is not a 32-byte hash")
    return AddCheckpoint(old_size=old_size, proof=proof, note=note)


class Witness:
    """Cosigns checkpoints of known logs that extend what it cosigned before.

    ``logs`` maps each log origin to the note keys it trusts for that log; ``signers`` are the
    witness's own cosigning keys (types 0x04 and/or 0x06). Build it with ``Witness.open``.
    """

    def __init__(
        self,
        *,
        db: sqlite3.Connection,
        logs: Mapping[str, Sequence[NoteVerifier]],
        signers: Sequence[NoteSigner],
    ) -> None:
        if not signers:
            raise ValueError("a witness needs at least one cosigning key")
        self._db = db
        self._logs = {origin: tuple(keys) for origin, keys in logs.items()}
        self._signers = tuple(signers)
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        logs: Mapping[str, Sequence[NoteVerifier]],
        signers: Sequence[NoteSigner],
    ) -> Witness:
        """Open (creating if needed) the witness state database at ``path``."""
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS latest ("
            " origin TEXT PRIMARY KEY, size INTEGER NOT NULL, note BLOB NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS refused ("
            " id INTEGER PRIMARY KEY, origin TEXT NOT NULL, status INTEGER NOT NULL,"
            " reason TEXT NOT NULL, request BLOB NOT NULL, latest BLOB)"
        )
        return cls(db=db, logs=logs, signers=signers)

    @property
    def verifiers(self) -> tuple[NoteVerifier, ...]:
        """The public halves of the witness's cosigning keys."""
        return tuple(s.verifier() for s in self._signers)

    def latest(self, origin: str) -> tuple[int, bytes] | None:
        """(size, note) of the latest checkpoint cosigned for ``origin``, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT size, note FROM latest WHERE origin = ?", (origin,)
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def refusals(self) -> list[tuple[str, int, str, bytes, bytes | None]]:
        """Every refused request of a known log: (origin, status, reason, request, latest)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT origin, status, reason, request, latest FROM refused ORDER BY id"
            ).fetchall()
        return [(o, s, r, bytes(q), None if la is None else bytes(la)) for o, s, r, q, la in rows]

    def add_checkpoint(self, body: bytes) -> bytes:
        """Handle one ``add-checkpoint`` request; returns the cosignature lines (200).

        Follows c2sp.org/tlog-witness, "add-checkpoint":
        1. Parse the body (malformed → 400) and the checkpoint's origin; unknown origin → 404.
        2. Verify the note against the log's trusted keys; no trusted signature → 403.
        3. old size > checkpoint size → 400.
        4. Atomically with step 6: old size must equal the size last cosigned (else 409 with that
           size, as ``text/x.tlog.size``); a size-0 checkpoint must have the empty tree's root,
           and a checkpoint of the stored size must have the stored root (else 422: both are
           consistency failures, and a 409 body would be read as the witness's size).
        5. The consistency proof from the stored checkpoint must verify (else 422).
        6. Cosign, then store the new checkpoint, in one transaction: the witness's state never
           moves ahead of a cosignature it issued. A checkpoint with extension lines is cosigned
           with the Ed25519 cosignature/v1 only (it signs the whole checkpoint text); the ML-DSA-44
           cosignature signs origin, size and root alone, so it would vouch for extension lines
           it does not cover and is left out for such checkpoints.
        A known log's refused request is kept with the witness's own checkpoint as evidence.
        """
        request = parse_add_checkpoint(body)
        text, checkpoint = self._verified(request.note)
        if request.old_size > checkpoint.size:
            raise WitnessRefusedError(400, "old size is larger than the checkpoint size")
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._check_extends(request, checkpoint)
                lines = signature_lines(text, self._signers_for(checkpoint))
                self._db.execute(
                    "INSERT INTO latest (origin, size, note) VALUES (?, ?, ?) "
                    "ON CONFLICT (origin) DO UPDATE SET size = excluded.size, note = excluded.note",
                    (checkpoint.origin, checkpoint.size, request.note),
                )
                self._db.execute("COMMIT")
            except WitnessRefusedError as refusal:
                self._db.execute("ROLLBACK")
                self._keep_evidence(checkpoint.origin, refusal, body)
                raise
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return lines

    def _signers_for(self, checkpoint: Checkpoint) -> tuple[NoteSigner, ...]:
        if not checkpoint.extensions:
            return self._signers
        return tuple(s for s in self._signers if not isinstance(s, MLDSA44NoteSigner))

    def _verified(self, note: bytes) -> tuple[bytes, Checkpoint]:
        text = note[: note.rfind(b"\n\n") + 1]
        try:
            checkpoint = Checkpoint.from_body(text)
        except FormatError as exc:
            raise FormatError(f"add-checkpoint: the checkpoint does not parse: {exc}") from None
        keys = self._logs.get(checkpoint.origin)
        if keys is None:
            raise WitnessRefusedError(404, f"unknown log origin {checkpoint.origin!r}")
        try:
            open_note(note, keys, required=())
        except SignatureError as exc:
            raise WitnessRefusedError(403, f"checkpoint not signed by the log: {exc}") from None
        return text, checkpoint

    def _check_extends(self, request: AddCheckpoint, checkpoint: Checkpoint) -> None:
        row = self._db.execute(
            "SELECT size, note FROM latest WHERE origin = ?", (checkpoint.origin,)
        ).fetchone()
        size = 0 if row is None else int(row[0])
        if request.old_size != size:
            raise WitnessRefusedError(409, f"old size {request.old_size} is not {size}", size=size)
        if checkpoint.size == 0 and checkpoint.root_hash != merkle.EMPTY_ROOT:
            raise WitnessRefusedError(422, "a checkpoint of size 0 must have the empty tree's root")
        if row is None:
            if request.proof:
                raise WitnessRefusedError(422, "the consistency proof from size 0 must be empty")
            return
        previous = note_checkpoint(bytes(row[1]))
        if previous.size == checkpoint.size:
            if previous.root_hash != checkpoint.root_hash:
                raise WitnessRefusedError(
                    422, f"inconsistent: a different root hash at the same size {size}"
                )
            return
        try:
            merkle.verify_consistency(
                old_size=previous.size,
                new_size=checkpoint.size,
                old_root=previous.root_hash,
                new_root=checkpoint.root_hash,
                proof=request.proof,
            )
        except ProofError as exc:
            raise WitnessRefusedError(422, f"consistency proof does not verify: {exc}") from None

    def _keep_evidence(self, origin: str, refusal: WitnessRefusedError, body: bytes) -> None:
        latest = self._db.execute("SELECT note FROM latest WHERE origin = ?", (origin,)).fetchone()
        self._db.execute(
            "INSERT INTO refused (origin, status, reason, request, latest) VALUES (?, ?, ?, ?, ?)",
            (origin, refusal.status, str(refusal), body, None if latest is None else latest[0]),
        )

    def close(self) -> None:
        """Close the state database."""
        with self._lock:
            self._db.close()
