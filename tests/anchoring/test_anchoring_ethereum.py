"""EthereumAnchor against a real in-process chain: web3's EthereumTesterProvider on py-evm.

Each test gets a fresh chain. eth-tester mines a block per transaction, with pre-funded accounts
the provider signs for; ``mine_blocks`` adds confirmations and snapshots model a reorganisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from web3 import EthereumTesterProvider, HTTPProvider, Web3

from qward.anchoring.base import ANCHOR_LABEL, AnchorProof, AnchorStatus, anchor_digest
from qward.anchoring.ethereum import DEFAULT_TAG, EthereumAnchor
from qward.errors import AuditError, FormatError, InputError, ProofError, VerificationError

# Runtime code PUSH1 0 PUSH1 0 REVERT, behind init code that returns it (PUSH5 code, PUSH1 0,
# MSTORE, PUSH1 5, PUSH1 27, RETURN): a sink whose every call fails.
REVERTING_CONTRACT = bytes.fromhex("6460006000fd" + "600052" + "6005601bf3")


@pytest.fixture()
def w3() -> Iterator[Web3]:
    yield Web3(EthereumTesterProvider())


def chain_of(w3: Web3) -> Any:
    return w3.provider.ethereum_tester  # type: ignore[attr-defined]


def anchor_for(w3: Web3, **kwargs: Any) -> EthereumAnchor:
    kwargs.setdefault("min_confirmations", 1)
    return EthereumAnchor(web3=w3, sender=w3.eth.accounts[0], **kwargs)


def with_data(proof: AnchorProof, **changes: Any) -> AnchorProof:
    return dataclasses.replace(proof, data={**proof.data, **changes})


def send(w3: Web3, data: bytes, **extra: Any) -> tuple[str, str, int]:
    sender = w3.eth.accounts[0]
    tx_hash = w3.eth.send_transaction({"from": sender, "to": sender, "data": data, **extra})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    return "0x" + tx_hash.hex(), "0x" + receipt["blockHash"].hex(), receipt["blockNumber"]


def test_fresh_chain_per_test(w3: Web3) -> None:
    assert w3.eth.block_number == 0


def test_anchor_and_verify_a_checkpoint(w3: Web3, note: bytes) -> None:
    anchor = anchor_for(w3)
    proof = anchor.anchor(note)
    assert proof.kind == anchor.name == "ethereum"
    assert proof.digest == hashlib.sha256(ANCHOR_LABEL + note).digest()
    assert set(proof.data) == {"block_hash", "block_number", "chain_id", "tx_hash"}
    assert proof.data["chain_id"] == w3.eth.chain_id
    tx = w3.eth.get_transaction(str(proof.data["tx_hash"]))
    assert bytes(tx["input"]) == DEFAULT_TAG + proof.digest
    assert tx["from"] == tx["to"] == w3.eth.accounts[0]

    anchored = anchor.verify(note, AnchorProof.from_json(proof.to_json()))
    block = w3.eth.get_block(proof.integer("block_number"))
    assert anchored.status is AnchorStatus.CONFIRMED
    assert anchored.time == block["timestamp"]
    assert anchored.digest == proof.digest
    assert str(proof.data["tx_hash"]) in anchored.evidence
    # A verifier needs only the provider, not the sender account.
    assert EthereumAnchor(web3=w3, min_confirmations=1).verify(note, proof) == anchored


def test_a_different_note_is_rejected(w3: Web3, note: bytes, other_note: bytes) -> None:
    anchor = anchor_for(w3)
    proof = anchor.anchor(note)
    with pytest.raises(ProofError, match="different note"):
        anchor.verify(other_note, proof)
    # Claiming the other note's digest over the same transaction fails on the calldata.
    forged = dataclasses.replace(proof, digest=anchor_digest(other_note))
    with pytest.raises(ProofError, match="calldata"):
        anchor.verify(other_note, forged)


def test_altered_transaction_hash_is_rejected(w3: Web3, note: bytes) -> None:
    anchor = anchor_for(w3)
    proof = anchor.anchor(note)
    with pytest.raises(ProofError, match="not on chain"):
        anchor.verify(note, with_data(proof, tx_hash="0x" + "11" * 32))
    other_tx, _, _ = send(w3, b"unrelated")
    with pytest.raises(ProofError):
        anchor.verify(note, with_data(proof, tx_hash=other_tx))


def test_altered_block_hash_and_number_are_rejected(w3: Web3, note: bytes) -> None:
    anchor = anchor_for(w3)
    proof = anchor.anchor(note)
    _, later_block, later_number = send(w3, b"later")
    with pytest.raises(ProofError, match="not in block"):
        anchor.verify(note, with_data(proof, block_hash=later_block))
    with pytest.raises(ProofError, match="not in block"):
        anchor.verify(note, with_data(proof, block_hash="0x" + "00" * 32))
    with pytest.raises(ProofError, match="height"):
        anchor.verify(note, with_data(proof, block_number=later_number))


def test_altered_chain_id_is_rejected(w3: Web3, note: bytes) -> None:
    anchor = anchor_for(w3)
    proof = anchor.anchor(note)
    with pytest.raises(ProofError, match="chain"):
        anchor.verify(note, with_data(proof, chain_id=1))


def test_not_enough_confirmations(w3: Web3, note: bytes) -> None:
    proof = anchor_for(w3).anchor(note)
    strict = anchor_for(w3, min_confirmations=3)
    with pytest.raises(ProofError, match="1 confirmations, fewer than the 3"):
        strict.verify(note, proof)
    chain_of(w3).mine_blocks(1)
    with pytest.raises(ProofError, match="2 confirmations"):
        strict.verify(note, proof)
    chain_of(w3).mine_blocks(1)
    assert strict.verify(note, proof).status is AnchorStatus.CONFIRMED


def test_a_transaction_with_other_calldata_is_rejected(w3: Web3, note: bytes) -> None:
    anchor = anchor_for(w3)
    digest = anchor_digest(note)
    cases = [
        DEFAULT_TAG + digest[:-1] + bytes([digest[-1] ^ 1]),  # one bit of the digest
        b"xxxx" + digest,  # another tag
        digest,  # no tag
        DEFAULT_TAG + digest + b"\x00",  # trailing byte
    ]
    for calldata in cases:
        tx_hash, block_hash, number = send(w3, calldata)
        chain = w3.eth.chain_id
        data = {"tx_hash": tx_hash, "block_hash": block_hash, "block_number": number}
        proof = AnchorProof(kind="ethereum", digest=digest, data={**data, "chain_id": chain})
        with pytest.raises(ProofError, match="calldata"):
            anchor.verify(note, proof)
    # The same transaction verifies under a verifier configured with its tag.
    tx_hash, block_hash, number = send(w3, b"abcd" + digest)
    data = {"tx_hash": tx_hash, "block_hash": block_hash, "block_number": number}
    proof = AnchorProof(kind="ethereum", digest=digest, data={**data, "chain_id": w3.eth.chain_id})
    assert anchor_for(w3, tag=b"abcd").verify(note, proof).status is AnchorStatus.CONFIRMED


def test_a_reorganised_anchor_is_rejected(w3: Web3, note: bytes) -> None:
    snapshot = chain_of(w3).take_snapshot()
    anchor = anchor_for(w3)
    proof = anchor.anchor(note)
    chain_of(w3).revert_to_snapshot(snapshot)
    chain_of(w3).mine_blocks(3)
    with pytest.raises(ProofError, match="not on chain"):
        anchor.verify(note, proof)


def test_local_account_signs_and_sink_receives(w3: Web3, note: bytes) -> None:
    account = Account.create()
    funding = w3.eth.send_transaction(
        {"from": w3.eth.accounts[0], "to": account.address, "value": 10**18}
    )
    w3.eth.wait_for_transaction_receipt(funding)
    sink = w3.eth.accounts[1]
    anchor = EthereumAnchor(web3=w3, sender=account, sink=sink, min_confirmations=1)
    assert account.key.hex() not in repr(anchor)
    proof = anchor.anchor(note)
    tx = w3.eth.get_transaction(str(proof.data["tx_hash"]))
    assert (tx["from"], tx["to"]) == (account.address, sink)
    assert anchor.verify(note, proof).status is AnchorStatus.CONFIRMED


def test_a_failed_transaction_neither_anchors_nor_verifies(w3: Web3, note: bytes) -> None:
    deploy = w3.eth.send_transaction({"from": w3.eth.accounts[0], "data": REVERTING_CONTRACT})
    contract = w3.eth.wait_for_transaction_receipt(deploy)["contractAddress"]
    assert contract is not None and w3.eth.get_code(contract) == bytes.fromhex("60006000fd")
    with pytest.raises(AuditError, match="not recorded"):
        anchor_for(w3, sink=contract).anchor(note)
    # Mined anyway with an explicit gas limit, the failed call still fails verification.
    digest = anchor_digest(note)
    tx_hash = w3.eth.send_transaction(
        {"from": w3.eth.accounts[0], "to": contract, "data": DEFAULT_TAG + digest, "gas": 100_000}
    )
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 0
    data = {
        "tx_hash": "0x" + tx_hash.hex(),
        "block_hash": "0x" + receipt["blockHash"].hex(),
        "block_number": receipt["blockNumber"],
        "chain_id": w3.eth.chain_id,
    }
    with pytest.raises(ProofError, match="failed"):
        anchor_for(w3).verify(note, AnchorProof(kind="ethereum", digest=digest, data=data))


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("tx_hash", "0x" + "AB" * 32, FormatError),  # upper-case hex
        ("tx_hash", "11" * 32, FormatError),  # no 0x
        ("tx_hash", "0x" + "11" * 31, FormatError),
        ("tx_hash", 5, FormatError),
        ("block_hash", "0x", FormatError),
        ("block_number", "1", FormatError),
        ("block_number", -1, FormatError),
        ("chain_id", "131277322940537", FormatError),
    ],
)
def test_malformed_proof_fields_name_the_field(
    w3: Web3, note: bytes, field: str, value: object, error: type[Exception]
) -> None:
    anchor = anchor_for(w3)
    proof = anchor.anchor(note)
    with pytest.raises(error, match=f"data.{field}"):
        anchor.verify(note, with_data(proof, **{field: value}))


def test_missing_or_extra_proof_fields(w3: Web3, note: bytes) -> None:
    anchor = anchor_for(w3)
    proof = anchor.anchor(note)
    short = {k: v for k, v in proof.data.items() if k != "tx_hash"}
    with pytest.raises(FormatError, match=r"missing fields \['tx_hash'\]"):
        anchor.verify(note, dataclasses.replace(proof, data=short))
    with pytest.raises(FormatError, match=r"unknown fields \['memo'\]"):
        anchor.verify(note, with_data(proof, memo="x"))
    with pytest.raises(ProofError, match="kind"):
        anchor.verify(note, dataclasses.replace(proof, kind="opentimestamps"))


def test_an_unreachable_provider_fails_closed(w3: Web3, note: bytes) -> None:
    proof = anchor_for(w3).anchor(note)
    down = Web3(HTTPProvider("http://127.0.0.1:1", exception_retry_configuration=None))
    with pytest.raises(VerificationError, match="provider failed"):
        EthereumAnchor(web3=down, min_confirmations=1).verify(note, proof)
    with pytest.raises(AuditError, match="not recorded"):
        EthereumAnchor(web3=down, sender=w3.eth.accounts[0]).anchor(note)


def test_configuration_is_checked(w3: Web3, note: bytes) -> None:
    with pytest.raises(InputError, match="no sender"):
        EthereumAnchor(web3=w3).anchor(note)
    with pytest.raises(InputError, match="tag"):
        EthereumAnchor(web3=w3, tag=b"abc")
    with pytest.raises(InputError, match="min_confirmations"):
        EthereumAnchor(web3=w3, min_confirmations=0)
    with pytest.raises(InputError, match="sink"):
        EthereumAnchor(web3=w3, sink="0x1234")
