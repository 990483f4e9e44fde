"""The witness protocol (c2sp.org/tlog-witness) and cosignatures (c2sp.org/tlog-cosignature)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.errors import FormatError, SignatureError, VerificationError
from qward.tlog.note import (
    SIGNATURE_TYPE_ED25519_COSIGNATURE,
    Ed25519CosignatureSigner,
    Ed25519NoteSigner,
    MLDSA44NoteSigner,
    NoteVerifier,
    add_signature_lines,
    cosignature_timestamp,
    note_signatures,
)
from qward.tlog.store import SQLiteLogStore
from qward.tlog.witness import (
    Witness,
    WitnessRefusedError,
    add_checkpoint_body,
    parse_add_checkpoint,
)
from qward.tlog.witness_policy import Quorum, UnsafeNoWitnesses

ORIGIN = "log.example/witnessed"
LOG_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
LOG_SIGNERS = (Ed25519NoteSigner(name=ORIGIN, private_key=LOG_KEY),)
LOG_VERIFIERS = tuple(s.verifier() for s in LOG_SIGNERS)


def witness_signers(n: int, clock: int = 1_700_000_000) -> tuple[Ed25519CosignatureSigner, ...]:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)
    name = f"witness.example/w{n}"
    return (Ed25519CosignatureSigner(name=name, private_key=key, clock=lambda: clock),)


def make_witness(path: Path, n: int = 1) -> Witness:
    return Witness.open(path, logs={ORIGIN: LOG_VERIFIERS}, signers=witness_signers(n))


def grow(store: SQLiteLogStore, count: int) -> bytes:
    """Append ``count`` entries and publish a checkpoint for them."""
    start = store.sequenced_size()
    store.sequence([f"entry {start + i}".encode() for i in range(count)])
    store.integrate()
    return store.publish(origin=ORIGIN, signers=LOG_SIGNERS)


def submit(witness: Witness, store: SQLiteLogStore, note: bytes, old: int) -> bytes:
    size = int(note.split(b"\n")[1])
    proof = store.consistency_proof(old, size) if old else ()
    return witness.add_checkpoint(add_checkpoint_body(old_size=old, proof=proof, note=note))


@pytest.fixture()
def log(tmp_path: Path) -> SQLiteLogStore:
    return SQLiteLogStore.open(tmp_path / "log.sqlite")


def test_the_ed25519_cosigned_message_matches_the_spec_example() -> None:
    # c2sp.org/tlog-cosignature, "Ed25519 signed message": the example message for this
    # checkpoint at time 1679315147. Signing it and verifying the spec's message proves the format.
    text = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    spec_message = b"cosignature/v1\ntime 1679315147\n" + text
    key = ed25519.Ed25519PrivateKey.generate()
    signer = Ed25519CosignatureSigner(name="w.example/1", private_key=key, clock=lambda: 1679315147)
    signature = signer.sign(text)
    assert signature[:8] == (1679315147).to_bytes(8, "big")
    key.public_key().verify(signature[8:], spec_message)
    assert cosignature_timestamp(SIGNATURE_TYPE_ED25519_COSIGNATURE, signature) == 1679315147
    # The key ID uses type 0x04 (not the 0x01 of plain Ed25519 note signatures).
    assert signer.key_id != NoteVerifier.for_ed25519("w.example/1", key.public_key()).key_id


def test_a_witness_cosigns_a_growing_log_and_clients_verify_a_quorum(
    tmp_path: Path, log: SQLiteLogStore
) -> None:
    witnesses = [make_witness(tmp_path / f"w{n}.sqlite", n) for n in (1, 2, 3)]
    note = grow(log, 5)
    cosigned = note
    for w in witnesses:
        cosigned = add_signature_lines(cosigned, submit(w, log, note, 0))
    policy = Quorum(threshold=2, witnesses=tuple(v for w in witnesses for v in w.verifiers))
    assert policy.check(cosigned) == (
        "witness.example/w1",
        "witness.example/w2",
        "witness.example/w3",
    )
    later = grow(log, 7)
    for w in witnesses[:2]:
        later = add_signature_lines(later, submit(w, log, later, 5))
    assert len(policy.check(later)) == 2
    assert witnesses[0].latest(ORIGIN) is not None
    assert witnesses[0].latest(ORIGIN)[0] == 12  # type: ignore[index]


def test_a_quorum_is_not_met_by_one_witness_or_by_unknown_keys(
    tmp_path: Path, log: SQLiteLogStore
) -> None:
    ours, stranger = make_witness(tmp_path / "a.sqlite", 1), make_witness(tmp_path / "b.sqlite", 9)
    note = grow(log, 3)
    cosigned = add_signature_lines(note, submit(ours, log, note, 0))
    cosigned = add_signature_lines(cosigned, submit(stranger, log, note, 0))
    w2 = witness_signers(2)[0].verifier()
    policy = Quorum(threshold=2, witnesses=(*ours.verifiers, w2))
    with pytest.raises(VerificationError, match="1 valid witness cosignatures"):
        policy.check(cosigned)
    assert UnsafeNoWitnesses().check(note) == ()
    with pytest.raises(Exception, match="impossible"):
        Quorum(threshold=3, witnesses=(*ours.verifiers, w2))


def test_a_forged_cosignature_fails_the_whole_check(tmp_path: Path, log: SQLiteLogStore) -> None:
    witness = make_witness(tmp_path / "w.sqlite")
    note = grow(log, 2)
    lines = bytearray(submit(witness, log, note, 0))
    lines[-5] ^= 1  # inside the base64 signature
    policy = Quorum(threshold=1, witnesses=witness.verifiers)
    with pytest.raises((SignatureError, FormatError)):
        policy.check(add_signature_lines(note, bytes(lines)))


def test_a_witness_refuses_a_fork_and_keeps_it_as_evidence(
    tmp_path: Path, log: SQLiteLogStore
) -> None:
    witness = make_witness(tmp_path / "w.sqlite")
    honest = grow(log, 4)
    submit(witness, log, honest, 0)
    # The same log key signs a different history of the same and of a larger size.
    with SQLiteLogStore.open(tmp_path / "fork.sqlite") as fork:
        fork.sequence([b"other"] * 4)
        fork.integrate()
        forked = fork.publish(origin=ORIGIN, signers=LOG_SIGNERS)
        with pytest.raises(WitnessRefusedError) as same_size:
            witness.add_checkpoint(add_checkpoint_body(old_size=4, proof=(), note=forked))
        # Same size, different root: a consistency failure (422), not a stale size (409).
        assert same_size.value.status == 422
        bigger = grow(fork, 4)
        with pytest.raises(WitnessRefusedError) as extended:
            witness.add_checkpoint(
                add_checkpoint_body(old_size=4, proof=fork.consistency_proof(4, 8), note=bigger)
            )
        assert extended.value.status == 422
    assert witness.latest(ORIGIN) == (4, honest)
    evidence = witness.refusals()
    assert [status for _, status, *_ in evidence] == [422, 422]
    assert all(latest == honest for *_, latest in evidence)


@pytest.mark.parametrize(
    ("old", "status"),
    [(0, 409), (3, 409), (6, 400)],
)
def test_old_size_mismatches(tmp_path: Path, log: SQLiteLogStore, old: int, status: int) -> None:
    witness = make_witness(tmp_path / "w.sqlite")
    submit(witness, log, grow(log, 2), 0)
    note = grow(log, 3)
    with pytest.raises(WitnessRefusedError) as refused:
        witness.add_checkpoint(
            add_checkpoint_body(
                old_size=old, proof=log.consistency_proof(2, 5) if old <= 5 else (), note=note
            )
        )
    assert refused.value.status == status
    if status == 409:
        assert refused.value.size == 2


def test_unknown_logs_and_unsigned_checkpoints(tmp_path: Path, log: SQLiteLogStore) -> None:
    witness = make_witness(tmp_path / "w.sqlite")
    note = grow(log, 1)
    other = Ed25519NoteSigner(name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.generate())
    text = note[: note.rfind(b"\n\n") + 1]
    from qward.tlog.note import sign_note

    with pytest.raises(WitnessRefusedError) as unsigned:
        witness.add_checkpoint(
            add_checkpoint_body(old_size=0, proof=(), note=sign_note(text, [other]))
        )
    assert unsigned.value.status == 403
    stranger = text.replace(ORIGIN.encode(), b"other.example/log")
    foreign = Ed25519NoteSigner(name="other.example/log", private_key=LOG_KEY)
    with pytest.raises(WitnessRefusedError) as unknown:
        witness.add_checkpoint(
            add_checkpoint_body(old_size=0, proof=(), note=sign_note(stranger, [foreign]))
        )
    assert unknown.value.status == 404
    assert witness.latest(ORIGIN) is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"old 1",
        b"new 0\n\nx\n",
        b"old 01\n\nx\n",
        b"old -1\n\nx\n",
        b"old 0\nnot base64!\n\nx\n",
        b"old 0\n" + b"AAAA\n" + b"\nx\n",
        b"old 0\n" + b"A" * 44 + b"\n" * 1 + (b"A" * 43 + b"=\n") * 63 + b"\nx\n",
    ],
)
def test_malformed_requests_are_format_errors(body: bytes) -> None:
    with pytest.raises(FormatError):
        parse_add_checkpoint(body)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**40), st.lists(st.binary(min_size=32, max_size=32), max_size=63))
def test_request_bodies_round_trip(old: int, proof: list[bytes]) -> None:
    note = b"o\n1\n" + b"A" * 43 + b"=\n\n\xe2\x80\x94 o AAAAAAA=\n"
    parsed = parse_add_checkpoint(add_checkpoint_body(old_size=old, proof=proof, note=note))
    assert (parsed.old_size, parsed.proof, parsed.note) == (old, tuple(proof), note)


def test_concurrent_submissions_never_roll_the_witness_back(
    tmp_path: Path, log: SQLiteLogStore
) -> None:
    witness = make_witness(tmp_path / "w.sqlite")
    notes = [grow(log, 1) for _ in range(12)]
    outcomes: list[int] = []

    def send(size: int) -> None:
        try:
            submit(witness, log, notes[size - 1], 0 if size == 1 else size - 1)
            outcomes.append(size)
        except WitnessRefusedError:
            pass

    threads = [threading.Thread(target=send, args=(n,)) for n in range(1, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Whatever order they arrived in, accepted sizes only ever grow and the state is the largest.
    latest = witness.latest(ORIGIN)
    assert latest is not None and latest[0] == max(outcomes)


def test_mldsa44_witness_keys_cosign_too(tmp_path: Path, log: SQLiteLogStore) -> None:
    key = mldsa.MLDSA44PrivateKey.from_seed_bytes(bytes(32))
    signer = MLDSA44NoteSigner(name="pq.witness/1", private_key=key, clock=lambda: 1_800_000_000)
    witness = Witness.open(tmp_path / "w.sqlite", logs={ORIGIN: LOG_VERIFIERS}, signers=(signer,))
    note = grow(log, 3)
    cosigned = add_signature_lines(note, submit(witness, log, note, 0))
    assert Quorum(threshold=1, witnesses=(signer.verifier(),)).check(cosigned) == ("pq.witness/1",)
    _, lines = note_signatures(cosigned)
    assert cosignature_timestamp(signer.algorithm, lines[-1][2]) == 1_800_000_000
