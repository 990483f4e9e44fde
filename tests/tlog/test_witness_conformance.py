"""Issue 17: `add-checkpoint` answers exactly as c2sp.org/tlog-witness says, from request bytes.

Spec text each test follows (c2sp.org/tlog-witness, "add-checkpoint"):
- "If the old size matches the checkpoint size, the witness MUST check that the root hashes are
  also identical" and refuse a mismatch as an inconsistency: 422, not 409 (a 409 body is the
  witness's own tree size, ``text/x.tlog.size``).
- A checkpoint may carry extension lines (c2sp.org/tlog-checkpoint); the Ed25519 cosignature/v1
  signs the whole checkpoint text, so such a checkpoint is cosignable.
- The witness "MUST persist the new checkpoint" only together with cosigning it: its state must
  never advance without a cosignature being returned.
- A size-0 tree has the empty tree's root; any other root is inconsistent (422).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.tlog.note import (
    Ed25519CosignatureSigner,
    Ed25519NoteSigner,
    MLDSA44NoteSigner,
    NoteSigner,
    note_signatures,
    signature_lines,
)
from qward.tlog.witness import Witness, add_checkpoint_body
from qward.witness.app import create_witness_app

ORIGIN = "log.example/conformance"
LOG_SIGNER = Ed25519NoteSigner(
    name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
)
NAME = "witness.example/conformance"
SIGNERS: tuple[NoteSigner, ...] = (
    Ed25519CosignatureSigner(
        name=NAME,
        private_key=ed25519.Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32),
        clock=lambda: 1_700_000_000,
    ),
    MLDSA44NoteSigner(
        name=NAME,
        private_key=mldsa.MLDSA44PrivateKey.from_seed_bytes(bytes([9]) * 32),
        clock=lambda: 1_700_000_000,
    ),
)


def note(size: int, root: bytes, *extensions: str) -> bytes:
    """A checkpoint signed by the log: origin, size, base64 root, extension lines."""
    lines = [ORIGIN, str(size), base64.b64encode(root).decode(), *extensions]
    text = ("\n".join(lines) + "\n").encode()
    return text + b"\n" + signature_lines(text, (LOG_SIGNER,))


def root(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def open_witness(path: Path, signers: tuple[NoteSigner, ...] = SIGNERS) -> Witness:
    return Witness.open(path, logs={ORIGIN: (LOG_SIGNER.verifier(),)}, signers=signers)


@pytest.fixture()
def witness(tmp_path: Path) -> Witness:
    return open_witness(tmp_path / "witness.sqlite")


def post(witness: Witness, old: int, checkpoint: bytes) -> tuple[int, str, bytes]:
    """POST add-checkpoint to the witness's real ASGI app; (status, content type, body)."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_witness_app(witness))
        async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
            body = add_checkpoint_body(old_size=old, proof=(), note=checkpoint)
            return await client.post("/add-checkpoint", content=body)

    reply = asyncio.run(call())
    return reply.status_code, reply.headers.get("content-type", ""), reply.content


def test_same_size_with_a_different_root_is_422_not_409(witness: Witness) -> None:
    first = note(8, root("a"))
    # Size 8 from nothing: the spec's proof from the empty tree is empty.
    assert post(witness, 0, first)[0] == 200
    status, kind, body = post(witness, 8, note(8, root("b")))
    assert status == 422 and not kind.startswith("text/x.tlog.size")
    assert b"same size 8" in body
    # The witness is not stuck: the honest checkpoint of that size is still cosigned.
    assert post(witness, 8, first)[0] == 200


def test_a_checkpoint_with_an_extension_line_is_cosigned_with_ed25519(witness: Witness) -> None:
    checkpoint = note(5, root("x"), "extension line from the log")
    status, _, body = post(witness, 0, checkpoint)
    assert status == 200, body
    lines = body.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"— {NAME} ")
    # The one line is a cosignature/v1 that verifies over the checkpoint with its extension.
    text, signatures = note_signatures(checkpoint + body)
    (name, key_id, signature) = signatures[-1]
    (key,) = [v for v in witness.verifiers if (v.name, v.key_id) == (name, key_id)]
    key.verify(text, signature)
    # And the state advanced with it: the next checkpoint must start from size 5.
    assert witness.latest(ORIGIN) is not None and witness.latest(ORIGIN)[0] == 5  # type: ignore[index]


def test_without_extension_lines_both_cosignature_types_are_issued(witness: Witness) -> None:
    status, _, body = post(witness, 0, note(3, root("y")))
    assert status == 200 and len(body.decode().splitlines()) == 2


class _BrokenSigner:
    """A witness key whose signing fails (a crash between storing and replying)."""

    name = NAME
    key_id = b"\x00\x01\x02\x03"

    def sign(self, message: bytes) -> bytes:
        raise RuntimeError("the signing key is gone")

    def verifier(self) -> object:
        return SIGNERS[0].verifier()


def test_state_never_advances_without_a_cosignature(tmp_path: Path) -> None:
    path = tmp_path / "witness.sqlite"
    broken = open_witness(path, signers=(_BrokenSigner(),))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        broken.add_checkpoint(add_checkpoint_body(old_size=0, proof=(), note=note(4, root("z"))))
    assert broken.latest(ORIGIN) is None
    broken.close()
    # With working keys the same request is cosigned: nothing was left behind to refuse it.
    healthy = open_witness(path)
    assert post(healthy, 0, note(4, root("z")))[0] == 200


def test_size_zero_with_a_non_empty_root_is_422_and_the_witness_is_not_stuck(
    witness: Witness,
) -> None:
    status, _, _ = post(witness, 0, note(0, root("not empty")))
    assert status == 422
    assert witness.latest(ORIGIN) is None
    assert post(witness, 0, note(0, hashlib.sha256(b"").digest()))[0] == 200
    assert post(witness, 0, note(2, root("later")))[0] == 200
