"""Rewrap: only the key-wrap section changes, payload bytes stay identical, and the artifact then
opens under the new primary KEK only. The migration report lists what still needs moving."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from qward.crypto.envelope import parse_sealed, seal
from qward.crypto.keys import HPKERecipientKey
from qward.crypto.rewrap import parse_front, read_front, rewrap_file
from qward.crypto.stream import read_stream_header, seal_stream
from qward.errors import DecryptionError, UnknownKeyError
from qward.protected.key_admin import (
    op_keys_report,
    op_keys_retire,
    op_keys_rewrap,
    op_keys_rotate,
)
from qward.protected.opening import open_sealed
from qward.protected.service import CoreService
from qward.protected.stream_opening import open_stream_to_file

from .conftest import log_entries

CT = "application/onnx"
DATA = bytes(i % 251 for i in range(40_000))


def _seal_opaque(data: bytes, *, trust: Any) -> bytes:
    # Sealed as a model without the SDK's model check: these tests are about keys, not models.
    return seal(data, recipient=trust.hpke_recipient, content_type="application/onnx")


def _rewrap(service: CoreService, path: Path) -> dict[str, object]:
    with open(path, "rb") as src:
        front = read_front(src)
    reply, new_front = op_keys_rewrap(service, {}, front.to_bytes())
    if reply["changed"]:
        rewrap_file(path, front, new_front)
    return reply


def _payload(path: Path) -> bytes:
    data = path.read_bytes()
    return data[parse_front_size(data) :]


def parse_front_size(data: bytes) -> int:
    with io.BytesIO(data) as src:
        return read_front(src).size


def test_rewrap_sealed_keeps_payload_and_opens_only_under_new_key(
    service: CoreService, tmp_path: Path
) -> None:
    path = tmp_path / "model.sealed"
    path.write_bytes(seal(DATA, recipient=service.trust.hpke_recipient, content_type=CT))
    before = path.read_bytes()
    old_id = parse_sealed(before).key_id
    old_keys = dict(service._keys.hpke)
    op_keys_rotate(service, {"purpose": "hpke-unwrap"}, b"")
    reply = _rewrap(service, path)
    after = path.read_bytes()
    assert reply["changed"] and reply["old_key_id"] == old_id
    new_id = service.trust.hpke_recipient.key_id
    assert parse_sealed(after).key_id == new_id
    assert _payload(path) == before[parse_front_size(before) :]
    art_before, art_after = parse_sealed(before), parse_sealed(after)
    assert art_before.header == art_after.header
    assert art_before.ciphertext == art_after.ciphertext  # byte-identical payload
    assert (
        open_sealed(after, keys=service._keys.hpke, limit=1 << 20, expected_content_type=CT) == DATA
    )
    # Under the old key alone it no longer opens.
    with pytest.raises(UnknownKeyError):
        open_sealed(after, keys=old_keys, limit=1 << 20, expected_content_type=CT)
    # Once rewrapped, the old key can be retired and the artifact still opens.
    op_keys_retire(service, {"key_id": old_id}, b"")
    assert (
        open_sealed(after, keys=service._keys.hpke, limit=1 << 20, expected_content_type=CT) == DATA
    )
    # A second rewrap is a no-op.
    assert _rewrap(service, path)["changed"] is False
    state = service._keys.state_dir
    assert state is not None
    entries = log_entries(state)
    assert any(b'"purpose":"rewrap"' in e and old_id.encode() in e for e in entries)
    assert any(b"artifact-rewrapped" in e for e in entries)


def test_rewrap_stream_keeps_every_chunk(service: CoreService, tmp_path: Path) -> None:
    path = tmp_path / "model.stream"
    out = io.BytesIO()
    seal_stream(
        io.BytesIO(DATA),
        out,
        recipient=service.trust.hpke_recipient,
        content_type=CT,
        chunk_size=16 * 1024,
    )
    before = out.getvalue()
    path.write_bytes(before)
    op_keys_rotate(service, {"purpose": "hpke-unwrap"}, b"")
    assert _rewrap(service, path)["changed"]
    after = path.read_bytes()
    assert after[parse_front_size(after) :] == before[parse_front_size(before) :]
    with open(path, "rb") as src:
        assert read_stream_header(src).key_id == service.trust.hpke_recipient.key_id
    target = tmp_path / "plain.onnx"
    with open(path, "rb") as src:
        open_stream_to_file(src, target, keys=service._keys.hpke, expected_content_type=CT)
    assert target.read_bytes() == DATA


def test_rewrap_refuses_a_retired_key_and_a_swapped_header(
    service: CoreService, tmp_path: Path
) -> None:
    blob = seal(DATA, recipient=service.trust.hpke_recipient, content_type=CT)
    old_id = parse_sealed(blob).key_id
    op_keys_rotate(service, {"purpose": "hpke-unwrap"}, b"")
    other = seal(DATA, recipient=service.trust.hpke_recipient, content_type=CT)
    # The old wrap moved onto another artifact's header fails: the wrap is bound to its header.
    front, foreign = parse_front(_front_bytes(blob)), parse_front(_front_bytes(other))
    spliced = foreign.with_wrap(front.wrap_bytes)
    with pytest.raises(DecryptionError):
        op_keys_rewrap(service, {}, spliced)
    op_keys_retire(service, {"key_id": old_id}, b"")
    with pytest.raises(UnknownKeyError, match="retired"):
        op_keys_rewrap(service, {}, front.to_bytes())


def _front_bytes(blob: bytes) -> bytes:
    return blob[: parse_front_size(blob)]


def test_migration_report_lists_weak_suites_and_non_primary_keys(
    service: CoreService, tmp_path: Path
) -> None:
    repo = tmp_path / "repository"
    (repo / "old").mkdir(parents=True)
    (repo / "classical").mkdir()
    (repo / "current").mkdir()
    (repo / "old" / "model.sealed").write_bytes(_seal_opaque(DATA, trust=service.trust))
    classical = HPKERecipientKey(
        x25519=x25519.X25519PrivateKey.generate().public_key().public_bytes_raw(),
        suite="X25519_HKDF_SHA256_AES_256_GCM",
    )
    (repo / "classical" / "model.sealed").write_bytes(
        seal(DATA, recipient=classical, content_type=CT)
    )
    (repo / "README.txt").write_text("not an artifact")
    op_keys_rotate(service, {"purpose": "hpke-unwrap"}, b"")
    (repo / "current" / "model.sealed").write_bytes(_seal_opaque(DATA, trust=service.trust))
    reply, _ = op_keys_report(service, {"directories": [str(repo)]}, b"")
    listed = {Path(a["path"]).parent.name: a for a in reply["artifacts"]}
    assert set(listed) == {"old", "classical"}
    assert listed["old"]["reasons"] == ["key is enabled (v1), not primary"]
    assert "not accepted for new seals under policy hybrid" in listed["classical"]["reasons"][0]
    assert "not in this core's manifest" in listed["classical"]["reasons"][1]
    # After rewrapping, only the foreign classical artifact remains.
    _rewrap(service, repo / "old" / "model.sealed")
    reply, _ = op_keys_report(service, {"directories": [str(repo)]}, b"")
    assert [Path(a["path"]).parent.name for a in reply["artifacts"]] == ["classical"]
