"""Proofs computed by a client from C2SP tiles, with no proof API on the server.

``TileReader`` turns tile fetches into the node getter that ``merkle.inclusion_proof`` and
``merkle.consistency_proof`` take: a node at tree height ``8*L + r`` is the root of ``2**r``
consecutive hashes of a level-``L`` tile. Tiles are fetched at the width the verified checkpoint
implies and cached, so a proof costs O(log n) fetches.
"""

from __future__ import annotations

from collections.abc import Callable

from qward.errors import FormatError
from qward.tlog.layout import TILE_HEIGHT, TileRef, parse_entry_bundle, tile_path, tile_width_at
from qward.tlog.merkle import HASH_SIZE, leaf_hash, root_from_leaf_hashes

__all__ = ["TileReader"]


class TileReader:
    """Reads a tiled log of ``size`` entries through ``fetch(path) -> bytes``."""

    def __init__(self, *, size: int, fetch: Callable[[str], bytes]) -> None:
        self._size = size
        self._fetch = fetch
        self._cache: dict[str, list[bytes]] = {}

    def _tile(self, level: int, index: int) -> list[bytes]:
        width = tile_width_at(TileRef(level=level, index=index), self._size)
        path = tile_path(TileRef(level=level, index=index, width=width))
        if path not in self._cache:
            data = self._fetch(path)
            if len(data) != width * HASH_SIZE:
                raise FormatError(f"{path}: expected {width * HASH_SIZE} bytes, got {len(data)}")
            self._cache[path] = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
        return self._cache[path]

    def node(self, height: int, index: int) -> bytes:
        """The hash of the complete subtree of ``2**height`` leaves starting at leaf
        ``index * 2**height``."""
        level, rest = divmod(height, TILE_HEIGHT)
        span = 1 << rest
        first = index * span
        hashes = self._tile(level, first >> TILE_HEIGHT)
        offset = first & ((1 << TILE_HEIGHT) - 1)
        if offset + span > len(hashes):
            raise FormatError(f"tile at level {level} is too narrow for node ({height}, {index})")
        return root_from_leaf_hashes(hashes[offset : offset + span])

    def entry(self, index: int) -> bytes:
        """Entry ``index`` from its bundle, checked against the level-0 tile."""
        bundle_index = index >> TILE_HEIGHT
        width = tile_width_at(TileRef(level=None, index=bundle_index), self._size)
        entries = parse_entry_bundle(
            self._fetch(tile_path(TileRef(level=None, index=bundle_index, width=width)))
        )
        if len(entries) != width:
            raise FormatError(
                f"entry bundle {bundle_index} has {len(entries)} entries, not {width}"
            )
        entry = entries[index & ((1 << TILE_HEIGHT) - 1)]
        if leaf_hash(entry) != self.node(0, index):
            raise FormatError(f"entry {index} does not hash to its level-0 tile")
        return entry
