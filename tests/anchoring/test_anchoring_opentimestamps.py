"""OpenTimestampsAnchor with the real python-opentimestamps client against loopback calendars.

The calendars are ``StandInCalendar``s (see standin_calendar.py): stand-ins for the public
calendars, which this machine cannot reach. Their Bitcoin "confirmation" is a synthetic block
header served as if by a trusted node, so the Bitcoin-attested path is exercised end to end but
real Bitcoin confirmation is not tested.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentimestamps.core.notary import (  # type: ignore[import-untyped]
    BitcoinBlockHeaderAttestation,
    PendingAttestation,
)
from opentimestamps.core.op import OpAppend, OpRIPEMD160, OpSHA1, OpSHA256  # type: ignore[import-untyped]
from opentimestamps.core.serialize import BytesDeserializationContext  # type: ignore[import-untyped]
from opentimestamps.core.timestamp import DetachedTimestampFile, Timestamp  # type: ignore[import-untyped]

from qward.anchoring.base import ANCHOR_LABEL, AnchorProof, AnchorStatus, anchor_digest
from qward.anchoring.opentimestamps import OpenTimestampsAnchor
from qward.encoding import b64decode, b64encode
from qward.errors import AuditError, FormatError, InputError, ProofError, QwardError

from .standin_calendar import StandInCalendar, serialize


@pytest.fixture()
def calendars() -> Iterator[list[StandInCalendar]]:
    servers = [StandInCalendar(), StandInCalendar()]
    yield servers
    for server in servers:
        server.close()


def anchor_for(calendars: list[StandInCalendar], **kwargs: object) -> OpenTimestampsAnchor:
    urls = [c.url for c in calendars]
    return OpenTimestampsAnchor(calendars=urls, calendar_uris=urls, timeout=5, **kwargs)  # type: ignore[arg-type]


def ots_bytes(proof: AnchorProof) -> bytes:
    return b64decode(proof.data["ots"], what="test")


def with_ots(proof: AnchorProof, raw: bytes) -> AnchorProof:
    return dataclasses.replace(proof, data={"ots": b64encode(raw)})


def parse(raw: bytes) -> DetachedTimestampFile:
    return DetachedTimestampFile.deserialize(BytesDeserializationContext(raw))


def test_anchor_is_a_pending_detached_timestamp(
    calendars: list[StandInCalendar], note: bytes
) -> None:
    anchor = anchor_for(calendars)
    proof = anchor.anchor(note)
    assert proof.kind == anchor.name == "opentimestamps"
    assert proof.digest == hashlib.sha256(ANCHOR_LABEL + note).digest()
    assert [c.submissions for c in calendars] == [1, 1]
    detached = parse(ots_bytes(proof))
    # An ordinary .ots proof for the file ANCHOR_LABEL || note, as `ots stamp` would make.
    assert detached.file_hash_op == OpSHA256()
    assert detached.file_digest == proof.digest
    uris = {a.uri for _, a in detached.timestamp.all_attestations()}
    assert uris == {c.url for c in calendars}

    anchored = anchor.verify(note, AnchorProof.from_json(proof.to_json()))
    assert anchored.status is AnchorStatus.PENDING and anchored.time is None
    assert all(f"pending at {c.url}" in anchored.evidence for c in calendars)


def test_the_calendars_never_see_the_digest(calendars: list[StandInCalendar], note: bytes) -> None:
    anchor = anchor_for(calendars, nonce=lambda n: b"\x07" * n)
    proof = anchor.anchor(note)
    (op,) = parse(ots_bytes(proof)).timestamp.ops
    assert op == OpAppend(b"\x07" * 16)
    assert anchor_digest(note) not in calendars[0]._pending


def test_upgrade_to_a_synthetic_bitcoin_block(
    calendars: list[StandInCalendar], note: bytes
) -> None:
    first = calendars[0]
    proof = anchor_for(calendars).anchor(note)
    still_pending = anchor_for(calendars).upgrade(note, proof)
    assert still_pending == proof

    first.confirm(height=900_001, block_time=1_800_000_000)
    upgraded = anchor_for(calendars).upgrade(note, proof)
    heights = [
        a.height
        for _, a in parse(ots_bytes(upgraded)).timestamp.all_attestations()
        if isinstance(a, BitcoinBlockHeaderAttestation)
    ]
    assert heights == [900_001]

    # Without a header source the Bitcoin attestation is reported, not believed.
    unchecked = anchor_for(calendars).verify(note, upgraded)
    assert unchecked.status is AnchorStatus.PENDING
    assert "bitcoin block 900001 not checked" in unchecked.evidence

    confirmed = anchor_for(calendars, bitcoin_headers=first.header).verify(note, upgraded)
    assert confirmed.status is AnchorStatus.CONFIRMED
    assert confirmed.time == 1_800_000_000
    assert "bitcoin block 900001" in confirmed.evidence

    # A header whose Merkle root differs (another block at that height) rejects the proof.
    def other_block(height: int) -> bytes:
        header = bytearray(first.header(height))
        header[40] ^= 1
        return bytes(header)

    with pytest.raises(ProofError, match="does not match block 900001"):
        anchor_for(calendars, bitcoin_headers=other_block).verify(note, upgraded)
    with pytest.raises(ProofError, match="80 bytes"):
        anchor_for(calendars, bitcoin_headers=lambda h: b"short").verify(note, upgraded)

    def missing(height: int) -> bytes:
        raise KeyError(height)

    with pytest.raises(ProofError, match="no header for block 900001"):
        anchor_for(calendars, bitcoin_headers=missing).verify(note, upgraded)


def test_wrong_note_is_rejected(
    calendars: list[StandInCalendar], note: bytes, other_note: bytes
) -> None:
    anchor = anchor_for(calendars)
    proof = anchor.anchor(note)
    with pytest.raises(ProofError, match="different note"):
        anchor.verify(other_note, proof)
    # Relabelling the proof with the other note's digest fails on the .ots file digest.
    relabelled = dataclasses.replace(proof, digest=anchor_digest(other_note))
    with pytest.raises(ProofError, match="different digest"):
        anchor.verify(other_note, relabelled)


def test_altered_ots_bytes_are_rejected(calendars: list[StandInCalendar], note: bytes) -> None:
    anchor = anchor_for(calendars)
    proof = anchor.anchor(note)
    raw = ots_bytes(proof)
    digest_at = raw.index(proof.digest)
    flipped_digest = raw[:digest_at] + bytes([raw[digest_at] ^ 1]) + raw[digest_at + 1 :]
    with pytest.raises(ProofError, match="different digest"):
        anchor.verify(note, with_ots(proof, flipped_digest))
    with pytest.raises(FormatError, match="do not parse"):
        anchor.verify(note, with_ots(proof, b"\x01" + raw[1:]))  # header magic
    with pytest.raises(FormatError, match="do not parse"):
        anchor.verify(note, with_ots(proof, raw[:-3]))  # truncated
    with pytest.raises(FormatError, match="do not parse"):
        anchor.verify(note, with_ots(proof, raw + b"\x00"))  # trailing bytes
    # Calendar URLs changed to ones this verifier does not trust leave no attestation.
    other = raw.replace(b"//127.0.0.1:", b"//127.0.0.2:")
    assert other.count(b"//127.0.0.2:") == 2
    with pytest.raises(ProofError, match="no attestation"):
        anchor.verify(note, with_ots(proof, other))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_byte_changes_never_strengthen_a_proof(data: st.DataObject) -> None:
    # The property: a mutated pending proof is rejected or stays pending; it never confirms.
    # Pending attestations are promises with nothing to check, so a changed nonce still parses.
    raw = bytearray(_PENDING_OTS)
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    proof = AnchorProof(kind="opentimestamps", digest=_DIGEST, data={"ots": b64encode(bytes(raw))})
    verifier = OpenTimestampsAnchor(
        calendars=["http://127.0.0.1:1/"],
        calendar_uris=["http://127.0.0.1:1"],
        bitcoin_headers=lambda h: bytes(80),
    )
    try:
        result = verifier.verify(_NOTE, proof)
    except QwardError:
        return
    assert result.status is AnchorStatus.PENDING


# A fixed pending proof for the property test, built offline the way a calendar answers.
_NOTE = b"log.example/fixed\n1\n" + b64encode(bytes(32)).encode() + b"\n\n\xe2\x80\x94 k AAAA\n"
_DIGEST = anchor_digest(_NOTE)


def _pending_ots() -> bytes:
    stamp = Timestamp(_DIGEST)
    tip = stamp.ops.add(OpAppend(b"\x05" * 16)).ops.add(OpSHA256())
    tip.ops.add(OpAppend(b"\x06" * 8)).attestations.add(PendingAttestation("http://127.0.0.1:1"))
    return serialize(DetachedTimestampFile(OpSHA256(), stamp))


_PENDING_OTS = _pending_ots()


def test_the_fixed_pending_proof_verifies() -> None:
    # So that the property test above starts from a proof that is accepted before mutation.
    proof = AnchorProof(
        kind="opentimestamps", digest=_DIGEST, data={"ots": b64encode(_PENDING_OTS)}
    )
    verifier = OpenTimestampsAnchor(calendars=["http://x/"], calendar_uris=["http://127.0.0.1:1"])
    assert verifier.verify(_NOTE, proof).evidence == "pending at http://127.0.0.1:1"


@pytest.mark.parametrize("op", [OpSHA1(), OpRIPEMD160()])
def test_weak_hash_operations_are_refused(op: object, note: bytes) -> None:
    digest = anchor_digest(note)
    stamp = Timestamp(digest)
    stamp.ops.add(op).attestations.add(PendingAttestation("http://127.0.0.1:1"))
    raw = serialize(DetachedTimestampFile(OpSHA256(), stamp))
    proof = AnchorProof(kind="opentimestamps", digest=digest, data={"ots": b64encode(raw)})
    verifier = OpenTimestampsAnchor(calendars=["http://x/"], calendar_uris=["http://127.0.0.1:1"])
    with pytest.raises(ProofError, match="not allowed"):
        verifier.verify(note, proof)


def test_non_canonical_ots_is_refused(note: bytes) -> None:
    # Two attestations written in reverse of the library's sorted order parse, but differently.
    digest = anchor_digest(note)
    a, b = PendingAttestation("http://127.0.0.1:1"), PendingAttestation("http://127.0.0.1:2")
    stamp = Timestamp(digest)
    stamp.attestations.update({a, b})
    canonical = serialize(DetachedTimestampFile(OpSHA256(), stamp))
    prefix_end = canonical.index(b"\xff\x00")
    swapped = canonical[:prefix_end] + b"\xff\x00" + _attestation(b) + b"\x00" + _attestation(a)
    assert parse(swapped).timestamp == stamp
    proof = AnchorProof(kind="opentimestamps", digest=digest, data={"ots": b64encode(swapped)})
    verifier = OpenTimestampsAnchor(calendars=["http://x/"], calendar_uris=["http://127.0.0.1:*"])
    with pytest.raises(FormatError, match="canonical"):
        verifier.verify(note, proof)
    canonical_proof = dataclasses.replace(proof, data={"ots": b64encode(canonical)})
    assert verifier.verify(note, canonical_proof).status is AnchorStatus.PENDING


def _attestation(attestation: object) -> bytes:
    from opentimestamps.core.serialize import BytesSerializationContext  # type: ignore[import-untyped]

    ctx = BytesSerializationContext()
    attestation.serialize(ctx)  # type: ignore[attr-defined]
    return bytes(ctx.getbytes())


def test_calendar_failures(calendars: list[StandInCalendar], note: bytes) -> None:
    calendars[0].fail_with = 503
    # The default quorum for two calendars is two.
    with pytest.raises(AuditError, match="1 of 2 calendars answered, 2 needed"):
        anchor_for(calendars).anchor(note)
    proof = anchor_for(calendars, min_calendars=1).anchor(note)
    anchored = anchor_for(calendars).verify(note, proof)
    assert anchored.evidence == f"pending at {calendars[1].url}"
    down = OpenTimestampsAnchor(calendars=["http://127.0.0.1:1/"], timeout=2)
    with pytest.raises(AuditError, match="0 of 1"):
        down.anchor(note)


def test_malformed_proof_data(calendars: list[StandInCalendar], note: bytes) -> None:
    anchor = anchor_for(calendars)
    proof = anchor.anchor(note)
    with pytest.raises(FormatError, match=r"data\.ots"):
        anchor.verify(note, dataclasses.replace(proof, data={"ots": "not base64!"}))
    with pytest.raises(FormatError, match=r"data\.ots"):
        anchor.verify(note, dataclasses.replace(proof, data={"ots": 7}))
    with pytest.raises(FormatError, match=r"unknown fields \['extra'\]"):
        anchor.verify(note, dataclasses.replace(proof, data={**proof.data, "extra": 1}))
    with pytest.raises(FormatError, match="size limit"):
        anchor.verify(note, with_ots(proof, bytes(64 * 1024 + 1)))
    with pytest.raises(ProofError, match="kind"):
        anchor.verify(note, dataclasses.replace(proof, kind="ethereum"))


def test_configuration_is_checked() -> None:
    with pytest.raises(InputError, match="at least one calendar"):
        OpenTimestampsAnchor(calendars=[])
    with pytest.raises(InputError, match="at least one calendar"):
        OpenTimestampsAnchor(calendars="http://one/")
    with pytest.raises(InputError, match="min_calendars"):
        OpenTimestampsAnchor(calendars=["http://one/"], min_calendars=2)
    # By default only the public calendars' pending attestations count.
    public = OpenTimestampsAnchor()
    assert public._trusted("https://alice.btc.calendar.opentimestamps.org")
    assert not public._trusted("http://127.0.0.1:1")


def test_anchor_refuses_answers_from_calendars_it_does_not_trust(
    calendars: list[StandInCalendar], note: bytes
) -> None:
    # Submitting to calendars whose pending attestations this anchor would not accept is a
    # misconfiguration, reported when anchoring rather than at the first verification.
    urls = [c.url for c in calendars]
    anchor = OpenTimestampsAnchor(calendars=urls, calendar_uris=["https://*.example"], timeout=5)
    with pytest.raises(AuditError, match=r"do not verify here: .*no attestation"):
        anchor.anchor(note)
