"""Anchor checkpoints in an Ethereum transaction's calldata, through web3.py and any provider.

Anchoring sends one zero-value transaction from a configured account to itself (or to a fixed
sink address) whose calldata is a 4-byte tag followed by the 32-byte anchor digest, waits for its
receipt, and records the chain id, transaction hash, block number and block hash. No contract is
involved: the calldata sits in the block's transaction trie, which the block hash commits to.

Verification asks the provider, and so trusts it to report the canonical chain; point it at a node
you run, or verify against several providers. In order:

1. The proof is an ``ethereum`` proof for this note, with exactly the expected fields.
2. The provider's chain id is the proof's.
3. The transaction exists, is mined in the proof's block (hash and number), carries the proof's
   chain id if it names one, and its calldata is exactly tag || digest.
4. Its receipt reports success.
5. The block at that height on the provider's chain has the proof's hash (a reorg fails here).
6. The block has at least ``min_confirmations`` confirmations (the block itself counts as one).

The result is the block's timestamp, set by its proposer within the consensus rules' tolerance.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from qward.anchoring.base import (
    AnchoredTime,
    AnchorProof,
    AnchorStatus,
    anchor_digest,
    check_proof_subject,
)
from qward.errors import (
    AuditError,
    FormatError,
    InputError,
    ProofError,
    QwardError,
    VerificationError,
)

try:
    from eth_account.signers.local import LocalAccount
    from hexbytes import HexBytes
    from web3 import Web3
    from web3.exceptions import BlockNotFound, TransactionNotFound
except ImportError as exc:  # pragma: no cover - exercised by a test that hides web3
    raise ImportError(
        "qward.anchoring.ethereum needs web3.py; install the extra: pip install 'qward[anchoring]'"
    ) from exc

__all__ = ["DEFAULT_TAG", "ETHEREUM_KIND", "EthereumAnchor"]

ETHEREUM_KIND = "ethereum"
#: The calldata prefix that marks a qward anchor ("qwa1"), so indexers can find them.
DEFAULT_TAG = b"qwa1"
#: Two epochs on Ethereum mainnet, about when a block becomes final; lower it only on test chains.
_DEFAULT_CONFIRMATIONS = 64
_HASH_HEX = re.compile(r"0x[0-9a-f]{64}")
_FIELDS = frozenset({"block_hash", "block_number", "chain_id", "tx_hash"})
_MAX_JSON_INT = 2**53 - 1


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def _hash_field(proof: AnchorProof, key: str) -> bytes:
    text = proof.text(key)
    if not _HASH_HEX.fullmatch(text):
        raise FormatError(f"anchor proof: data.{key} is not 0x and 64 lower-case hex digits")
    return bytes.fromhex(text[2:])


class EthereumAnchor:
    """Anchors in Ethereum calldata. ``sender`` is only needed to anchor, not to verify.

    ``sender`` is either an address the provider signs for (``eth_sendTransaction``) or an
    eth-account ``LocalAccount`` whose key signs here and never reaches the provider.
    """

    def __init__(
        self,
        *,
        web3: Web3,
        sender: str | LocalAccount | None = None,
        sink: str | None = None,
        tag: bytes = DEFAULT_TAG,
        min_confirmations: int = _DEFAULT_CONFIRMATIONS,
        receipt_timeout: float = 120.0,
    ) -> None:
        if not isinstance(tag, bytes) or len(tag) != 4:
            raise InputError("ethereum anchor: the calldata tag must be 4 bytes")
        if isinstance(min_confirmations, bool) or min_confirmations < 1:
            raise InputError("ethereum anchor: min_confirmations must be at least 1")
        for what, address in (("sender", sender), ("sink", sink)):
            if isinstance(address, str) and not Web3.is_address(address):
                raise InputError(f"ethereum anchor: {what} {address!r} is not an address")
        self._w3 = web3
        self._sender = sender
        self._sink = sink
        self._tag = tag
        self._min_confirmations = min_confirmations
        self._receipt_timeout = receipt_timeout

    @property
    def name(self) -> str:
        """The proof kind, ``"ethereum"``."""
        return ETHEREUM_KIND

    def __repr__(self) -> str:
        # A LocalAccount's repr does not show its key, but say so rather than rely on it.
        sender = self._sender.address if isinstance(self._sender, LocalAccount) else self._sender
        return f"EthereumAnchor(sender={sender!r}, sink={self._sink!r}, tag={self._tag.hex()!r})"

    def anchor(self, note: bytes) -> AnchorProof:
        """Send tag || digest as calldata, wait for the receipt and return the proof."""
        sender = self._sender
        if sender is None:
            raise InputError("ethereum anchor: no sender account is configured, so it can't anchor")
        digest = anchor_digest(note)
        try:
            chain_id = int(self._w3.eth.chain_id)
            tx_hash = self._send(sender, self._tag + digest, chain_id)
            receipt = self._w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self._receipt_timeout
            )
        except Exception as exc:
            # The provider boundary: web3, its transports and in-process backends each raise their
            # own types (a revert from eth-tester is not a Web3Exception), so all become one error.
            raise AuditError(f"ethereum anchor: the transaction was not recorded: {exc}") from None
        if receipt["status"] != 1:
            raise AuditError(f"ethereum anchor: transaction {_hex(tx_hash)} failed on chain")
        if not 0 <= chain_id <= _MAX_JSON_INT:
            raise AuditError(f"ethereum anchor: chain id {chain_id} does not fit a proof")
        data: dict[str, str | int] = {
            "block_hash": _hex(receipt["blockHash"]),
            "block_number": int(receipt["blockNumber"]),
            "chain_id": chain_id,
            "tx_hash": _hex(tx_hash),
        }
        return AnchorProof(kind=ETHEREUM_KIND, digest=digest, data=data)

    def _send(self, sender: str | LocalAccount, calldata: bytes, chain_id: int) -> HexBytes:
        if isinstance(sender, LocalAccount):
            return self._send_signed(sender, calldata, chain_id)
        tx: dict[str, Any] = {"from": sender, "to": self._sink or sender, "value": 0}
        tx["data"] = calldata
        return self._w3.eth.send_transaction(tx)  # type: ignore[arg-type]

    def _send_signed(self, account: LocalAccount, calldata: bytes, chain_id: int) -> HexBytes:
        """Build an EIP-1559 transaction, sign it with the local key and send the raw bytes."""
        eth = self._w3.eth
        tx: dict[str, Any] = {
            "from": account.address,
            "to": self._sink or account.address,
            "value": 0,
            "data": calldata,
            "chainId": chain_id,
            "nonce": eth.get_transaction_count(account.address, "pending"),
        }
        tx["gas"] = eth.estimate_gas(tx)  # type: ignore[arg-type]
        priority = eth.max_priority_fee
        # Twice the current base fee leaves room for six full blocks of base-fee growth.
        tx["maxFeePerGas"] = 2 * int(eth.get_block("latest")["baseFeePerGas"]) + priority
        tx["maxPriorityFeePerGas"] = priority
        signed = account.sign_transaction(tx)
        return eth.send_raw_transaction(signed.raw_transaction)

    def verify(self, note: bytes, proof: AnchorProof) -> AnchoredTime:
        """Check the transaction, block, chain and confirmations; return the block's time."""
        digest = check_proof_subject(note, proof, kind=ETHEREUM_KIND)
        proof.expect_keys(_FIELDS)
        tx_hash, block_hash = _hash_field(proof, "tx_hash"), _hash_field(proof, "block_hash")
        block_number, chain_id = proof.integer("block_number"), proof.integer("chain_id")
        try:
            return self._verify(digest, tx_hash, block_hash, block_number, chain_id)
        except QwardError:
            raise
        except (TransactionNotFound, BlockNotFound):
            raise ProofError(
                f"ethereum anchor: transaction {_hex(tx_hash)} or block {block_number} "
                f"is not on chain {chain_id} as the provider sees it"
            ) from None
        except Exception as exc:  # the provider boundary, as in anchor(): fail closed
            raise VerificationError(
                f"ethereum anchor: cannot verify, provider failed: {exc}"
            ) from None

    def _verify(
        self, digest: bytes, tx_hash: bytes, block_hash: bytes, block_number: int, chain_id: int
    ) -> AnchoredTime:
        eth = self._w3.eth
        if int(eth.chain_id) != chain_id:
            raise ProofError(
                f"ethereum anchor: provider is on chain {eth.chain_id}, not {chain_id}"
            )
        tx = eth.get_transaction(HexBytes(tx_hash))
        if bytes(tx["hash"]) != tx_hash:
            raise ProofError("ethereum anchor: the provider returned a different transaction")
        if tx.get("blockHash") is None or bytes(tx["blockHash"]) != block_hash:
            raise ProofError(f"ethereum anchor: transaction is not in block {_hex(block_hash)}")
        if tx.get("blockNumber") != block_number:
            raise ProofError(f"ethereum anchor: transaction is not at height {block_number}")
        if "chainId" in tx and int(tx["chainId"]) != chain_id:
            raise ProofError(f"ethereum anchor: transaction is signed for chain {tx['chainId']}")
        if not hmac.compare_digest(bytes(tx["input"]), self._tag + digest):
            raise ProofError("ethereum anchor: transaction calldata is not the tag and digest")
        if eth.get_transaction_receipt(HexBytes(tx_hash))["status"] != 1:
            raise ProofError("ethereum anchor: the anchoring transaction failed on chain")
        block = eth.get_block(block_number)
        if bytes(block["hash"]) != block_hash:
            raise ProofError(
                f"ethereum anchor: block {block_number} on the provider's chain is not "
                f"{_hex(block_hash)} (reorganised, or a different chain)"
            )
        confirmations = int(eth.block_number) - block_number + 1
        if confirmations < self._min_confirmations:
            raise ProofError(
                f"ethereum anchor: block {block_number} has {confirmations} confirmations, "
                f"fewer than the {self._min_confirmations} required"
            )
        return AnchoredTime(
            kind=ETHEREUM_KIND,
            digest=digest,
            status=AnchorStatus.CONFIRMED,
            time=int(block["timestamp"]),
            evidence=(
                f"ethereum chain {chain_id} block {block_number} ({_hex(block_hash)}) "
                f"tx {_hex(tx_hash)}, {confirmations} confirmations"
            ),
        )
