"""The ledger the anchorer writes to, built from ``anchors.json``: Ethereum over JSON-RPC.

The account's key signs here, in the core (``eth_sendRawTransaction``); it never reaches the
node, and this module never prints or logs it. web3 is imported only when anchoring is
configured, so a core without ``anchors.json`` does not need the ``anchoring`` extra.
"""

from __future__ import annotations

from typing import Any

from qward.anchoring.base import AnchoredTime, AnchorProof
from qward.errors import AuditError, InputError, QwardError
from qward.protected.anchor_config import AnchorConfig

__all__ = ["EthereumLedger"]

#: Per JSON-RPC call: a node that does not answer must not hold the anchorer for long.
_RPC_TIMEOUT = 10.0
_RECEIPT_TIMEOUT = 30.0


class EthereumLedger:
    """Anchors with ``EthereumAnchor`` and reports how many confirmations a proof has."""

    def __init__(self, config: AnchorConfig) -> None:
        try:
            from eth_account import Account
            from web3 import HTTPProvider, Web3

            from qward.anchoring.ethereum import EthereumAnchor
        except ImportError as exc:
            raise InputError(
                "anchors.json asks for Ethereum anchoring, which needs the anchoring extra: "
                "pip install 'qward[anchoring]'"
            ) from exc
        self._config = config
        self._w3 = Web3(HTTPProvider(config.rpc_url, request_kwargs={"timeout": _RPC_TIMEOUT}))
        account = Account.from_key(config.private_key)
        self.address: str = account.address
        self._anchor = EthereumAnchor(
            web3=self._w3,
            sender=account,
            min_confirmations=config.confirmations,
            receipt_timeout=_RECEIPT_TIMEOUT,
        )

    def __repr__(self) -> str:
        return f"EthereumLedger(rpc_url={self._config.rpc_url!r}, sender={self.address!r})"

    def anchor(self, note: bytes) -> AnchorProof:
        """Check the node is on the configured chain, then anchor ``note``."""
        self._call(self._check_chain)
        return self._anchor.anchor(note)

    def confirmations(self, proof: AnchorProof) -> int:
        """How many blocks, the proof's own included, the node has on top of it now."""
        height: int = self._call(lambda: int(self._w3.eth.block_number))
        return height - proof.integer("block_number") + 1

    def verify(self, note: bytes, proof: AnchorProof) -> AnchoredTime:
        """Full verification with the configured confirmations (block hash, calldata, chain)."""
        return self._anchor.verify(note, proof)

    def _check_chain(self) -> None:
        found = int(self._w3.eth.chain_id)
        if found != self._config.chain_id:
            raise AuditError(
                f"anchors.json: the node at rpc_url is on chain {found}, not chain_id "
                f"{self._config.chain_id}"
            )

    @staticmethod
    def _call(call: Any) -> Any:
        try:
            return call()
        except QwardError:
            raise
        except Exception as exc:  # the provider boundary: every transport error is one kind
            raise AuditError(f"ethereum node did not answer: {type(exc).__name__}") from None
