"""One trust bundle for the cores that share a transparency log.

Cores appending to one log sign checkpoints with the same log identity, but each keeps its own
receipt and HPKE keys. ``merge_trust`` combines their bundles into one that lists every core's
receipt keys, so that a verifier holding it checks receipts from any of them (a v2 receipt needs
only the shared checkpoint key; a v1 receipt, its core's own receipt key). Sealing stays per core:
the merged bundle's sealing key is the first core's, and a client that seals to another core
fetches that core's own bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from qward.encoding import parse_canonical_json
from qward.errors import InputError
from qward.receipts.trust import TrustBundle

__all__ = ["merge_trust"]


def merge_trust(bundles: Sequence[TrustBundle]) -> TrustBundle:
    """The bundle of the first core, listing the receipt keys of every core of ``bundles``.

    Every bundle must name the same log: origin, checkpoint keys and witness policy.
    """
    if not bundles:
        raise InputError("merging trust bundles needs at least one")
    first = bundles[0]
    keys = {k.key_id: k for k in first.receipt_keys}
    for n, bundle in enumerate(bundles[1:], start=2):
        if bundle.origin != first.origin:
            raise InputError(
                f"trust bundle {n} is for log {bundle.origin!r}, not {first.origin!r}: the cores "
                "do not share one log"
            )
        if _log_part(bundle, "log_verifiers", "log_key_versions") != _log_part(
            first, "log_verifiers", "log_key_versions"
        ):
            raise InputError(
                f"trust bundle {n} names other checkpoint keys for {first.origin!r}: give every "
                "core the same log identity"
            )
        if _log_part(bundle, "witnesses") != _log_part(first, "witnesses"):
            raise InputError(f"trust bundle {n} has another witness policy than bundle 1")
        for key in bundle.receipt_keys:
            keys.setdefault(key.key_id, key)
    return replace(first, receipt_keys=tuple(keys.values()), attestation=None)


def _log_part(bundle: TrustBundle, *members: str) -> list[object]:
    """``members`` of the bundle's canonical encoding (keys compared as their vkey strings)."""
    doc = parse_canonical_json(bundle.to_bytes(), what="trust bundle")
    return [doc.get(m) for m in members]
