"""C2SP tlog-tiles layout: tile paths, tile contents and entry bundles (pure functions).

Per c2sp.org/tlog-tiles: a tile at level ``L`` and index ``N`` holds up to 256 consecutive Merkle
Tree Hashes at tree height ``8 * L``; hash ``i`` is ``MTH(D[(N*256+i) * 256**L : (N*256+i+1) *
256**L])``, which is exactly the stored complete-subtree node ``(8 * L, N * 256 + i)``. Entry
bundles hold the entries of a level-0 tile, each prefixed by a big-endian uint16 length.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qward.errors import FormatError, InputError

__all__ = [
    "MAX_BUNDLE_ENTRY",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileRef",
    "encode_entry_bundle",
    "parse_entry_bundle",
    "parse_tile_path",
    "tile_hashes",
    "tile_path",
    "tile_width_at",
]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_BUNDLE_ENTRY = 0xFFFF
_MAX_LEVEL = 63
_PATH = re.compile(
    r"^tile/(entries|0|[1-9][0-9]?)/((?:x[0-9]{3}/)*[0-9]{3})(?:\.p/([1-9][0-9]{0,2}))?$"
)


@dataclass(frozen=True, kw_only=True)
class TileRef:
    """A tile (``level`` is None for an entry bundle) and its width (256 when full)."""

    level: int | None
    index: int
    width: int = TILE_WIDTH

    @property
    def partial(self) -> bool:
        """Whether this is a partial tile."""
        return self.width < TILE_WIDTH


def _encode_index(index: int) -> str:
    groups = []
    while True:
        groups.append(f"{index % 1000:03d}")
        index //= 1000
        if index == 0:
            break
    groups.reverse()
    return "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])


def tile_path(ref: TileRef) -> str:
    """``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]``."""
    if ref.index < 0 or not 1 <= ref.width <= TILE_WIDTH:
        raise InputError(f"invalid tile index {ref.index} or width {ref.width}")
    head = "entries" if ref.level is None else str(ref.level)
    suffix = f".p/{ref.width}" if ref.partial else ""
    return f"tile/{head}/{_encode_index(ref.index)}{suffix}"


def parse_tile_path(path: str) -> TileRef:
    """Parse a tile or entry-bundle path, rejecting any non-canonical spelling."""
    match = _PATH.match(path)
    if match is None:
        raise InputError(f"{path!r} is not a tlog-tiles path")
    head, digits, width = match.groups()
    level = None if head == "entries" else int(head)
    if level is not None and level > _MAX_LEVEL:
        raise InputError(f"tile level {level} is above {_MAX_LEVEL}")
    ref = TileRef(
        level=level,
        index=int(digits.replace("x", "").replace("/", "")),
        width=int(width) if width else TILE_WIDTH,
    )
    if ref.width > TILE_WIDTH or (width and ref.width == TILE_WIDTH):
        raise InputError(f"partial tile width {ref.width} must be 1 to 255")
    if tile_path(ref) != path:
        raise InputError(f"{path!r} is not in canonical form")
    return ref


def tile_width_at(ref: TileRef, tree_size: int) -> int:
    """How many hashes (or entries) the tile has in a tree of ``tree_size``; 0 if none."""
    level = ref.level or 0
    available = tree_size // (TILE_WIDTH**level) - ref.index * TILE_WIDTH
    return int(max(0, min(TILE_WIDTH, available)))


def tile_hashes(ref: TileRef, node: Callable[[int, int], bytes]) -> bytes:
    """The tile's content from the stored complete-subtree nodes."""
    if ref.level is None:
        raise InputError("an entry bundle has no hashes")
    height = ref.level * TILE_HEIGHT
    first = ref.index * TILE_WIDTH
    return b"".join(node(height, first + i) for i in range(ref.width))


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """Entries as a bundle of uint16-length-prefixed entries."""
    out = []
    for entry in entries:
        if len(entry) > MAX_BUNDLE_ENTRY:
            raise InputError(f"an entry of {len(entry)} bytes cannot be served in a bundle")
        out.append(struct.pack(">H", len(entry)) + entry)
    return b"".join(out)


def parse_entry_bundle(bundle: bytes) -> list[bytes]:
    """Split a bundle into its entries; a truncated or over-long bundle is a ``FormatError``."""
    entries, pos = [], 0
    while pos < len(bundle):
        if pos + 2 > len(bundle):
            raise FormatError("entry bundle is truncated in a length prefix")
        (length,) = struct.unpack_from(">H", bundle, pos)
        if pos + 2 + length > len(bundle):
            raise FormatError("entry bundle is truncated in an entry")
        entries.append(bundle[pos + 2 : pos + 2 + length])
        pos += 2 + length
        if len(entries) > TILE_WIDTH:
            raise FormatError("entry bundle holds more than 256 entries")
    return entries
