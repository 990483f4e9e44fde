"""Merging the trust bundles of cores that share one log."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qward.errors import InputError
from qward.protected.key_admin import build_trust
from qward.protected.keyring import KeyRing
from qward.protected.keystore import CoreKeys
from qward.protected.log_identity import LogIdentity
from qward.receipts.cluster_trust import merge_trust
from qward.receipts.trust import TrustBundle


def _core(identity: LogIdentity | None) -> TrustBundle:
    keys = CoreKeys(ring=KeyRing.generate(origin="own.example/log"))
    keys.log_identity = identity
    return build_trust(keys)


def test_cores_with_one_identity_merge_into_one_bundle_listing_every_receipt_key() -> None:
    identity = LogIdentity.generate("shared.example/log")
    bundles = [_core(identity) for _ in range(3)]
    # Each core's own bundle already names the shared log, not its keystore's own origin.
    assert {b.origin for b in bundles} == {"shared.example/log"}
    merged = merge_trust(bundles)
    assert merged.origin == "shared.example/log"
    assert {k.key_id for k in merged.receipt_keys} == {
        k.key_id for b in bundles for k in b.receipt_keys
    }
    assert len(merged.receipt_keys) == 3
    # Sealing goes to the first core; the merged bundle survives a round trip.
    assert merged.hpke_recipient.key_id == bundles[0].hpke_recipient.key_id
    assert TrustBundle.from_bytes(merged.to_bytes()) == TrustBundle.from_bytes(merged.to_bytes())


def test_bundles_of_different_logs_or_keys_are_refused() -> None:
    identity = LogIdentity.generate("shared.example/log")
    one = _core(identity)
    with pytest.raises(InputError, match="do not share one log"):
        merge_trust([one, _core(None)])
    impostor = LogIdentity.generate("shared.example/log")
    with pytest.raises(InputError, match="other checkpoint keys"):
        merge_trust([one, _core(impostor)])
    with pytest.raises(InputError, match="at least one"):
        merge_trust([])
    assert merge_trust([one]) == replace(one, attestation=None)
