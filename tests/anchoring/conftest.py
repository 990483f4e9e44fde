"""Real signed checkpoint notes to anchor: a Merkle root over entries, signed with Ed25519."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from qward.tlog import merkle
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.note import Ed25519NoteSigner, NoteVerifier, open_note, sign_note

from .anvil_node import AnvilNode, anvil_binary, free_port

ORIGIN = "log.example/anchoring-test"
SIGNER = Ed25519NoteSigner(
    name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
)


def signed_checkpoint(size: int) -> bytes:
    """A checkpoint note over ``size`` entries, as the log publishes it, checked by open_note."""
    entries = [f"entry {i}".encode() for i in range(size)]
    root = merkle.root_from_leaf_hashes([merkle.leaf_hash(e) for e in entries])
    note = sign_note(Checkpoint(origin=ORIGIN, size=size, root_hash=root).to_body(), [SIGNER])
    text, _ = open_note(note, [verifier()])
    assert Checkpoint.from_body(text).size == size
    return note


def verifier() -> NoteVerifier:
    return SIGNER.verifier()


@pytest.fixture(scope="session")
def note() -> bytes:
    return signed_checkpoint(5)


@pytest.fixture(scope="session")
def other_note() -> bytes:
    return signed_checkpoint(6)


@pytest.fixture(scope="module")
def node() -> Iterator[AnvilNode]:
    """A real anvil node on a free port (skips without anvil). Interval mining: a block every
    second, so confirmations accrue without anyone mining by hand."""
    running = AnvilNode(anvil_binary(), free_port(), block_time=1)
    yield running
    running.stop()
