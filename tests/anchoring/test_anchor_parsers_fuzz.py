"""Hostile input to the anchoring parsers: ``anchors.json`` and a bundle's ``anchors`` section.

Whatever the bytes, the answer is a config or a ``QwardError`` naming what is wrong, never another
exception (and never the key file's content).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qward.errors import QwardError
from qward.protected.anchor_config import load_anchor_config
from qward.protected.key_admin import build_trust
from qward.protected.keystore import create_keystore
from qward.receipts.anchors import verify_bundle_anchors
from qward.receipts.trust import TrustBundle
from qward.tlog.checkpoint import Checkpoint

_KEY = "ab" * 32
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "ledger": st.sampled_from(["ethereum", "bitcoin", ""]) | _JSON,
        "rpc_url": st.sampled_from(["http://127.0.0.1:8545", "ftp://x"]) | _JSON,
        "chain_id": st.integers(-2, 2**70) | _JSON,
        "private_key_file": st.sampled_from(["anchor.key", "nope", "", "../anchor.key"]) | _JSON,
        "every_checkpoints": st.integers(-2, 5) | _JSON,
        "interval_seconds": st.floats(-1, 10, allow_nan=False) | _JSON,
        "confirmations": st.integers(-2, 5) | _JSON,
        "extra": _JSON,
    },
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fields=_FIELDS)
def test_anchor_config_fields(tmp_path: Path, fields: dict[str, Any]) -> None:
    key = tmp_path / "anchor.key"
    key.write_text(_KEY)
    key.chmod(0o600)
    try:
        config = load_anchor_config(tmp_path, json.dumps(fields).encode())
    except QwardError as exc:
        assert _KEY not in str(exc)
        return
    assert config.ledger == "ethereum" and config.confirmations >= 1
    assert config.every_checkpoints is not None or config.interval_seconds is not None


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_anchor_config_bytes(raw: bytes) -> None:
    with contextlib.suppress(QwardError):
        load_anchor_config(Path("/nonexistent"), raw)


_CHECKPOINT = Checkpoint(origin="log.example/fuzz", size=3, root_hash=bytes(32))


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory) -> TrustBundle:
    # A real trust bundle; with no anchor items in the bundle, no key in it is ever used.
    state = tmp_path_factory.mktemp("fuzz-keys")
    return build_trust(create_keystore(state, origin="log.example/fuzz", passphrase="fuzz"))


@settings(max_examples=300, deadline=None)
@given(section=_JSON)
def test_bundle_anchor_section(trust: TrustBundle, section: Any) -> None:
    try:
        checks = verify_bundle_anchors({"items": [], "anchors": section}, _CHECKPOINT, trust)
    except QwardError:
        return
    assert checks == ()
