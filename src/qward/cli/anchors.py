"""``qward audit verify --rpc-url``: the ledger to check anchors on, and how they are reported."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from qward.anchoring.base import Anchor
from qward.cli._app import console
from qward.errors import InputError
from qward.receipts.anchors import AnchorCheck

__all__ = ["ethereum_ledgers", "print_anchors"]


def ethereum_ledgers(rpc_url: str | None, confirmations: int) -> Sequence[Anchor]:
    """An ``EthereumAnchor`` on ``rpc_url`` (none without one: anchors are checked offline)."""
    if rpc_url is None:
        return ()
    if not rpc_url.startswith(("http://", "https://")):
        raise InputError("--rpc-url must be an http:// or https:// URL")
    if confirmations < 1:
        raise InputError("--confirmations must be at least 1")
    try:
        from web3 import HTTPProvider, Web3

        from qward.anchoring.ethereum import EthereumAnchor
    except ImportError:
        raise InputError(
            "--rpc-url needs the anchoring extra: pip install 'qward[anchoring]'"
        ) from None
    web3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
    return (EthereumAnchor(web3=web3, min_confirmations=confirmations),)


def print_anchors(anchors: Sequence[AnchorCheck], *, online: bool) -> None:
    """One line per verified anchor; a reminder when the ledger itself was not asked."""
    for check in anchors:
        where = f"anchor #{check.index}: checkpoint {check.checkpoint_size} in {check.kind}"
        if check.ledger is not None and check.ledger.time is not None:
            when = datetime.fromtimestamp(check.ledger.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            console.print(f"[green]OK[/green] {where}: {check.ledger.evidence}, at {when}")
        else:
            console.print(f"[green]OK[/green] {where}: proof binds the signed note (offline)")
    if anchors and not online:
        console.print("anchors checked offline only; add --rpc-url to check them on chain")
