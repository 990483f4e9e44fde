"""What every transparency-log store offers, and the storage-independent checks the stores share.

``LogBackend`` is the interface the auditor, the sequencer and ``verify_log`` take, so that the
SQLite default (``store.SQLiteLogStore``) and PostgreSQL (``pg_store.PostgresLogStore``) are
interchangeable. Both are built on ``sql_store.SQLLogStore``; this module holds only the contract
and the pure helpers, and imports no database driver.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from qward.errors import AuditError
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.note import NoteSigner

__all__ = [
    "MAX_ENTRY_BYTES",
    "Fence",
    "KeyReference",
    "LogBackend",
    "check_entries",
    "note_checkpoint",
    "signer_ids",
]

#: The largest entry a log accepts; far above any audit record, it bounds one row's size.
MAX_ENTRY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Fence:
    """A publisher lease as the database granted it: who holds it and in which epoch.

    Several cores may append to one log, but only the holder of the current lease may publish a
    checkpoint; the store checks the fence inside the publishing transaction, so a core whose
    lease has expired or passed to another can never publish (``FencedError``).
    """

    holder: str
    epoch: int


class KeyReference(Protocol):
    """Anything that names a note key: a ``NoteSigner`` or a ``NoteVerifier``."""

    @property
    def name(self) -> str: ...
    @property
    def key_id(self) -> bytes: ...
    @property
    def algorithm(self) -> int: ...


class LogBackend(Protocol):
    """Durable log storage appended in Tessera's three phases, with proofs and full reads.

    1. ``sequence`` gives entries consecutive indices and commits them in one transaction; once it
       returns, the entries are durable (the point of acknowledgement).
    2. ``integrate`` stores the subtree hashes the new leaves complete and returns (size, root).
    3. ``publish`` signs the integrated tree head as a C2SP checkpoint, refusing to sign a tree
       inconsistent with any checkpoint it signed before.

    Every storage failure raises ``AuditError``; requests outside the tree raise ``InputError``.
    """

    def sequence(self, entries: Sequence[bytes], *, durable: bool = True) -> list[int]:
        """Append ``entries``; returns their indices once they are committed.

        A ``durable`` commit survives power loss when this returns. Without it the commit survives
        the process (it is in the database's write-ahead log) and becomes power-loss durable with
        the next durable commit, which the database writes after it.
        """
        ...

    def integrate(self) -> tuple[int, bytes]:
        """Extend the tree to every sequenced entry; returns (size, root hash)."""
        ...

    def publish(
        self,
        *,
        origin: str,
        signers: Sequence[NoteSigner],
        integrate: bool = False,
        fence: Fence | None = None,
    ) -> bytes:
        """Sign and store a checkpoint of the integrated tree (integrating first, in the same
        transaction, if ``integrate``); returns the signed note. With ``fence``, only while that
        publisher lease is the current one (``FencedError`` otherwise)."""
        ...

    def add_cosignatures(self, note: bytes) -> None:
        """Replace a recent checkpoint with the same note plus witness cosignature lines."""
        ...

    def size(self) -> int:
        """The integrated tree size."""
        ...

    def sequenced_size(self) -> int:
        """How many entries are durably sequenced (integrated or not)."""
        ...

    def entry(self, index: int) -> bytes:
        """The entry at ``index``."""
        ...

    def node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree of ``2**level`` leaves at leaf ``index * 2**level``."""
        ...

    def inclusion_proof(self, index: int, size: int) -> tuple[bytes, ...]:
        """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
        ...

    def consistency_proof(self, old: int, new: int) -> tuple[bytes, ...]:
        """RFC 9162 consistency proof from tree size ``old`` to ``new``."""
        ...

    def latest_checkpoint(self) -> bytes | None:
        """The most recently published signed checkpoint, if any."""
        ...

    def checkpoints(self) -> Iterator[bytes]:
        """Every published signed checkpoint, oldest first."""
        ...

    def checkpoint_rows(self) -> Iterator[tuple[int, str, bytes]]:
        """(number, signer ids, signed note) of every stored checkpoint, in number order."""
        ...

    def entries_with_leaf_hashes(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(index, entry, stored leaf hash) for every sequenced entry, in index order."""
        ...

    def node_rows(self) -> Iterator[tuple[int, int, bytes]]:
        """(level, index, hash) for every stored node row of level 1 and up, level by level."""
        ...

    def level_rows(self, level: int) -> Iterator[tuple[int, bytes]]:
        """(index, hash) of the stored nodes of one level in index order; 0 gives leaf hashes."""
        ...

    def close(self) -> None:
        """Release the storage; further calls fail."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


def check_entries(entries: Sequence[bytes]) -> None:
    """Refuse anything but ``bytes`` of at most ``MAX_ENTRY_BYTES``, before any storage work."""
    for entry in entries:
        if not isinstance(entry, bytes):
            raise AuditError("transparency log: entries must be bytes")
        if len(entry) > MAX_ENTRY_BYTES:
            raise AuditError(f"transparency log: entry over {MAX_ENTRY_BYTES} bytes refused")


def note_checkpoint(note: bytes) -> Checkpoint:
    """The checkpoint in one of our own stored notes (its text ends at the last blank line)."""
    return Checkpoint.from_body(note[: note.rfind(b"\n\n") + 1])


def signer_ids(keys: Sequence[KeyReference]) -> str:
    """The signer set a checkpoint row records: ``name+keyid+type``, one key a line, in order."""
    return "\n".join(f"{k.name}+{k.key_id.hex()}+{k.algorithm:02x}" for k in keys)
