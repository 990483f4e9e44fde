"""The public server's view of the core's trust bundle: refresh without a thread hop when it is
fresh, and receipt checks that reuse a verifier without ever trusting another bundle's keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qward.encoding import canonical_json
from qward.errors import AuditError
from qward.protected.service import CoreService
from qward.public.trust_source import TrustSource
from qward.receipts.trust import TrustBundle
from qward.sdk.client import seal_input, seal_model

from .conftest import make_service
from conftest import example_bytes, iris_inputs


class _Core:
    """The one call ``TrustSource`` makes of the core, answered by an in-process service."""

    def __init__(self, service: CoreService) -> None:
        self.service = service
        self.fetches = 0

    def trust(self) -> TrustBundle:
        self.fetches += 1
        return self.service.trust


def _receipt(service: CoreService) -> bytes:
    reply, _ = service.dispatch(
        {"op": "register_model", "name": "iris"},
        seal_model(example_bytes("iris-mlp.onnx"), trust=service.trust),
    )
    inputs, seed = iris_inputs()
    reply, _ = service.dispatch(
        {"op": "run", "model_sha256": reply["model_sha256"], "seed": seed},
        seal_input(inputs, trust=service.trust),
    )
    return str(reply["receipt"]).encode()


def test_fresh_bundle_is_handed_out_without_a_fetch_and_a_stale_one_is_not(
    service: CoreService,
) -> None:
    now = [0.0]
    core = _Core(service)
    source = TrustSource(core, min_interval=1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    assert source.current_nowait() is service.trust and core.fetches == 1
    now[0] = 1.5
    assert source.current_nowait() is None
    assert source.current() is service.trust and core.fetches == 2
    assert source.current_nowait() is service.trust


def test_checks_reuse_a_verifier_but_never_another_bundles_keys(
    service: CoreService, tmp_path: Path
) -> None:
    source = TrustSource(_Core(service))  # type: ignore[arg-type]
    receipt = _receipt(service)
    source.check_receipt(receipt, service.trust)
    source.check_receipt(receipt, service.trust)  # the opened checkpoint is reused
    # A tampered body does not lead to the checkpoint, cached or not.
    doc = json.loads(receipt)
    doc["body"]["seed"] += 1
    with pytest.raises(AuditError, match="does not verify against the core's trust bundle"):
        source.check_receipt(canonical_json(doc), service.trust)
    # Under another core's bundle the same receipt is refused: the cache is per bundle.
    other = make_service(tmp_path / "other")
    try:
        with pytest.raises(AuditError, match="does not verify"):
            source.check_receipt(receipt, other.trust)
    finally:
        other._models.close()
