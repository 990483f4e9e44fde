"""The note text of a C2SP tlog-checkpoint (c2sp.org/tlog-checkpoint@v1.0.0).

A checkpoint body is at least three non-empty newline-terminated lines: the log's origin, the tree
size in decimal without leading zeroes, and the base64 RFC 6962 root hash, optionally followed by
opaque extension lines. Parsing is strict: the only accepted encoding of a checkpoint is the one
``to_body`` produces, so a parsed checkpoint re-encodes to the exact signed bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qward.encoding import b64decode, b64encode
from qward.errors import FormatError
from qward.tlog.merkle import HASH_SIZE

__all__ = ["MAX_CHECKPOINT_BYTES", "MAX_TREE_SIZE", "Checkpoint"]

#: Far above any real checkpoint; it only bounds the work a hostile body can cause.
MAX_CHECKPOINT_BYTES = 64 * 1024
#: Cosignatures encode sizes as uint64 (c2sp.org/tlog-cosignature); we stay within int64.
MAX_TREE_SIZE = 2**63 - 1

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x1f]")


def _check_line(line: str, what: str) -> None:
    # Signed notes forbid control characters other than newline (c2sp.org/signed-note), and a
    # newline inside a field would shift every later line.
    if not line:
        raise FormatError(f"checkpoint: {what} is empty")
    if _CONTROL.search(line):
        raise FormatError(f"checkpoint: {what} contains a control character")


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A log's signed statement of its tree size and root hash, before signing."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin line")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise FormatError("checkpoint: tree size must be an integer")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise FormatError(f"checkpoint: tree size {self.size} is out of range")
        if len(self.root_hash) != HASH_SIZE:
            raise FormatError(f"checkpoint: root hash must be {HASH_SIZE} bytes")
        for line in self.extensions:
            _check_line(line, "extension line")

    def to_body(self) -> bytes:
        """The note text: origin, size, base64 root hash and extension lines, each ending in LF."""
        lines = [self.origin, str(self.size), b64encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines).encode("utf-8")

    @classmethod
    def from_body(cls, body: bytes) -> Checkpoint:
        """Strictly parse checkpoint note text (verified by the caller); raise ``FormatError``.

        1. The body is UTF-8 and ends with a newline (c2sp.org/tlog-checkpoint, "Note text").
        2. It has at least three lines, none of them empty.
        3. Line 1 is the origin; line 2 the tree size in ASCII decimal with no leading zeroes;
           line 3 the canonical base64 of a 32-byte root hash; the rest are extension lines.
        """
        if len(body) > MAX_CHECKPOINT_BYTES:
            raise FormatError("checkpoint: body is over the size limit")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("checkpoint: body is not valid UTF-8") from None
        if not text.endswith("\n"):
            raise FormatError("checkpoint: body does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise FormatError("checkpoint: expected origin, size and root hash lines")
        origin, size, root, *extensions = lines
        # The length bound keeps int() away from its quadratic-time path on hostile input.
        if len(size) > 19 or not _DECIMAL.fullmatch(size):
            raise FormatError("checkpoint: tree size is not a decimal without leading zeroes")
        return cls(
            origin=origin,
            size=int(size),
            root_hash=b64decode(root, what="checkpoint root hash"),
            extensions=tuple(extensions),
        )
