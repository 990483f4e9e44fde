"""C2SP tlog-tiles layout: spec examples as known answers, and tile proofs equal store proofs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.errors import FormatError, InputError, NotFoundError
from qward.protected.auditor import Auditor
from qward.tlog.layout import (
    TileRef,
    encode_entry_bundle,
    parse_entry_bundle,
    parse_tile_path,
    tile_path,
    tile_width_at,
)
from qward.tlog.merkle import inclusion_proof
from qward.tlog.note import Ed25519NoteSigner
from qward.tlog.store import SQLiteLogStore
from qward.tlog.tile_reader import TileReader


def test_spec_path_example() -> None:
    # c2sp.org/tlog-tiles: "index 1234067 will be encoded as x001/x234/067".
    assert tile_path(TileRef(level=0, index=1234067)) == "tile/0/x001/x234/067"
    assert (
        tile_path(TileRef(level=None, index=1234067, width=3)) == "tile/entries/x001/x234/067.p/3"
    )
    assert parse_tile_path("tile/0/x001/x234/067") == TileRef(level=0, index=1234067)


def test_spec_tree_of_70000() -> None:
    # c2sp.org/tlog-tiles: 273 full level-0 tiles, a partial of width 112, one full level-1 tile,
    # a partial level-1 tile of width 17 and a partial level-2 tile of width 1.
    size = 70_000
    assert all(tile_width_at(TileRef(level=0, index=i), size) == 256 for i in range(273))
    assert tile_width_at(TileRef(level=0, index=273), size) == 112
    assert tile_width_at(TileRef(level=1, index=0), size) == 256
    assert tile_width_at(TileRef(level=1, index=1), size) == 17
    assert tile_width_at(TileRef(level=2, index=0), size) == 1
    assert tile_width_at(TileRef(level=3, index=0), size) == 0
    # "a tree of size 256 will be represented by a full level 0 tile and a partial level 1 tile
    # of width 1"
    assert tile_width_at(TileRef(level=1, index=0), 256) == 1


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/1",
        "tile/0/0001",
        "tile/0/x000/001",
        "tile/00/001",
        "tile/0/001.p/256",
        "tile/0/001.p/0",
        "tile/0/001.p/01",
        "tile/64/000",
        "tile/entries/001.p/",
        "../etc/passwd",
        "tile/0/001/",
        "tile/x/001",
    ],
)
def test_non_canonical_paths_are_refused(path: str) -> None:
    with pytest.raises(InputError):
        parse_tile_path(path)


@given(
    index=st.integers(0, 10**12),
    level=st.one_of(st.none(), st.integers(0, 63)),
    width=st.integers(1, 256),
)
def test_path_round_trip(index: int, level: int | None, width: int) -> None:
    ref = TileRef(level=level, index=index, width=width)
    assert parse_tile_path(tile_path(ref)) == ref


@given(st.lists(st.binary(max_size=300), max_size=256))
def test_bundle_round_trip(entries: list[bytes]) -> None:
    assert parse_entry_bundle(encode_entry_bundle(entries)) == entries


def test_truncated_bundle_is_refused() -> None:
    bundle = encode_entry_bundle([b"abc", b"defg"])
    for cut in range(1, len(bundle)):
        if cut not in (5,):  # 5 bytes is exactly the first entry
            with pytest.raises(FormatError):
                parse_entry_bundle(bundle[:cut])


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[SQLiteLogStore, Auditor]:
    store = SQLiteLogStore.open(Path(tmp_path_factory.mktemp("tiles")) / "log.sqlite")
    signer = Ed25519NoteSigner(
        name="example.test/log", private_key=ed25519.Ed25519PrivateKey.generate()
    )
    auditor = Auditor(store=store, origin="example.test/log", signers=[signer])
    for batch in range(9):
        auditor.record([f"entry {batch}-{i}".encode() for i in range(70)])
        auditor.commit()
    return store, auditor


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_tile_proofs_equal_store_proofs(
    tiled: tuple[SQLiteLogStore, Auditor], data: st.DataObject
) -> None:
    store, auditor = tiled
    size = store.size()
    index = data.draw(st.integers(0, size - 1))
    reader = TileReader(size=size, fetch=auditor.tile)
    assert inclusion_proof(index, size, reader.node) == tuple(store.inclusion_proof(index, size))
    assert reader.entry(index) == store.entry(index)


def test_tiles_beyond_the_published_tree_are_not_served(
    tiled: tuple[SQLiteLogStore, Auditor],
) -> None:
    _, auditor = tiled
    with pytest.raises(NotFoundError):
        auditor.tile("tile/0/003")  # 630 entries: the fourth level-0 tile is not full
    assert len(auditor.tile("tile/0/002.p/118")) == 118 * 32
    assert len(auditor.tile("tile/0/002.p/5")) == 5 * 32  # a prefix, as at an earlier size


def test_reader_refuses_a_tile_of_the_wrong_size(tiled: tuple[SQLiteLogStore, Auditor]) -> None:
    _, auditor = tiled
    reader = TileReader(size=630, fetch=lambda path: auditor.tile(path)[:-32])
    with pytest.raises(FormatError):
        reader.node(0, 5)
