"""The anchoring interface: the digest, the proof's wire format, AnchoredTime and dispatch."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from web3 import EthereumTesterProvider, Web3

from qward.anchoring.base import (
    PROOF_FORMAT,
    AnchoredTime,
    AnchorProof,
    AnchorStatus,
    anchor_digest,
    check_proof_subject,
    verify_anchor,
)
from qward.anchoring.ethereum import EthereumAnchor
from qward.anchoring.opentimestamps import OpenTimestampsAnchor
from qward.encoding import canonical_json
from qward.errors import FormatError, InputError, ProofError, VerificationError

# The signed checkpoint example of c2sp.org/tlog-checkpoint@v1.0.0 (used as bytes only). The
# expected digest was computed outside Python:
#   printf 'qward/anchor/v1\n<the note>' | sha256sum
SPEC_NOTE = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/"
    "Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
).encode()
SPEC_DIGEST = "206d102b9607ef7ff15e37f559d68f0b89336a5b63def2788e3ff811a3d9489b"

PROOF = AnchorProof(
    kind="ethereum", digest=bytes(range(32)), data={"block_number": 7, "tx_hash": "0xab"}
)


def test_anchor_digest_known_answer() -> None:
    assert anchor_digest(SPEC_NOTE).hex() == SPEC_DIGEST


def test_anchor_digest_rejects_empty_and_oversized_notes() -> None:
    with pytest.raises(InputError):
        anchor_digest(b"")
    with pytest.raises(InputError):
        anchor_digest("text")  # type: ignore[arg-type]
    with pytest.raises(FormatError, match="size limit"):
        anchor_digest(b"x" * (1024 * 1024 + 1))


def test_proof_json_is_canonical_and_round_trips() -> None:
    raw = PROOF.to_json()
    assert raw == (
        b'{"data":{"block_number":7,"tx_hash":"0xab"},'
        b'"digest":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",'
        b'"format":"qward/anchor-proof/v1","kind":"ethereum"}'
    )
    assert AnchorProof.from_json(raw) == PROOF


@given(
    kind=st.from_regex(r"[a-z][a-z0-9-]{0,31}", fullmatch=True),
    digest=st.binary(min_size=32, max_size=32),
    data=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
        st.text() | st.integers(-(2**53) + 1, 2**53 - 1),
        max_size=5,
    ),
)
def test_round_trip_property(kind: str, digest: bytes, data: dict[str, str | int]) -> None:
    proof = AnchorProof(kind=kind, digest=digest, data=data)
    assert AnchorProof.from_json(proof.to_json()) == proof


def test_proof_data_is_a_read_only_copy() -> None:
    data: dict[str, str | int] = {"a": 1}
    proof = AnchorProof(kind="k", digest=bytes(32), data=data)
    data["a"] = 2
    assert proof.data["a"] == 1
    with pytest.raises(TypeError):
        proof.data["a"] = 3  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        proof.kind = "other"  # type: ignore[misc]


def _obj(**changes: object) -> bytes:
    obj: dict[str, object] = {
        "data": {"a": 1},
        "digest": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "format": PROOF_FORMAT,
        "kind": "ethereum",
    }
    obj.update(changes)
    return canonical_json({k: v for k, v in obj.items() if v is not None})


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (_obj(format="qward/anchor-proof/v2"), "format"),
        (_obj(format=None), "missing fields ['format']"),
        (_obj(extra=1), "unknown fields ['extra']"),
        (_obj(kind="Ethereum"), "kind"),
        (_obj(kind=""), "kind"),
        (_obj(kind=5), "kind"),
        (_obj(digest="AAEC"), "digest"),
        (_obj(digest="not base64"), "digest"),
        (_obj(digest=7), "digest"),
        (_obj(data=[1]), "data"),
        (_obj(data={"a": True}), "data.a"),
        (_obj(data={"a": None}), "data.a"),
        (_obj(data={"a": [1]}), "data.a"),
        (_obj(data={"a": {"b": 1}}), "data.a"),
        (_obj(data={"A": 1}), "data key 'A'"),
        (_obj(data={"a": 2**53 - 1}).replace(b"991", b"992"), "data.a: integer"),
        (b'{"kind": "ethereum"}', "canonical"),
        (b'{"data":{"a":1.5}}', "floating-point"),
        (b"[]", "object"),
        (b"\xff", "UTF-8"),
        (b" " * (256 * 1024 + 1), "size limit"),
    ],
)
def test_from_json_rejects_bad_input_naming_the_field(raw: bytes, names: str) -> None:
    with pytest.raises(FormatError) as caught:
        AnchorProof.from_json(raw)
    assert names in str(caught.value)


def test_typed_accessors_name_the_field() -> None:
    assert PROOF.integer("block_number") == 7
    assert PROOF.text("tx_hash") == "0xab"
    with pytest.raises(FormatError, match=r"data\.tx_hash"):
        PROOF.integer("tx_hash")
    with pytest.raises(FormatError, match=r"data\.missing"):
        PROOF.text("missing")
    negative = AnchorProof(kind="k", digest=bytes(32), data={"n": -1})
    with pytest.raises(FormatError, match=r"data\.n"):
        negative.integer("n")
    PROOF.expect_keys(frozenset({"block_number", "tx_hash"}))
    with pytest.raises(FormatError, match=r"missing fields \['chain_id'\]"):
        PROOF.expect_keys(frozenset({"block_number", "tx_hash", "chain_id"}))


def test_check_proof_subject() -> None:
    proof = AnchorProof(kind="ethereum", digest=anchor_digest(SPEC_NOTE), data={})
    assert check_proof_subject(SPEC_NOTE, proof, kind="ethereum") == proof.digest
    with pytest.raises(ProofError, match="different note"):
        check_proof_subject(SPEC_NOTE + b"x", proof, kind="ethereum")
    with pytest.raises(ProofError, match="kind 'ethereum', not 'opentimestamps'"):
        check_proof_subject(SPEC_NOTE, proof, kind="opentimestamps")


def test_anchored_time_keeps_time_and_status_consistent() -> None:
    digest = bytes(32)
    with pytest.raises(InputError):
        AnchoredTime(kind="k", digest=digest, status=AnchorStatus.PENDING, time=5, evidence="")
    with pytest.raises(InputError):
        AnchoredTime(kind="k", digest=digest, status=AnchorStatus.CONFIRMED, time=None, evidence="")
    with pytest.raises(InputError):
        AnchoredTime(kind="k", digest=digest, status=AnchorStatus.CONFIRMED, time=-1, evidence="")


def test_verify_anchor_dispatches_on_the_proof_kind(note: bytes) -> None:
    w3 = Web3(EthereumTesterProvider())
    ethereum = EthereumAnchor(web3=w3, sender=w3.eth.accounts[0], min_confirmations=1)
    calendars = OpenTimestampsAnchor(calendars=["http://127.0.0.1:1/"])
    proof = ethereum.anchor(note)
    anchored = verify_anchor(note, proof, anchors=[calendars, ethereum])
    assert anchored.kind == "ethereum" and anchored.status is AnchorStatus.CONFIRMED
    with pytest.raises(VerificationError, match="no configured anchor"):
        verify_anchor(note, proof, anchors=[calendars])
    with pytest.raises(InputError, match="two configured anchors"):
        verify_anchor(note, proof, anchors=[ethereum, ethereum])


def test_base_imports_no_ledger_library() -> None:
    code = (
        "import sys, qward.anchoring, qward.anchoring.base; "
        "bad = [m for m in ('web3', 'opentimestamps', 'eth_account') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("module", "hidden"),
    [("qward.anchoring.ethereum", "web3"), ("qward.anchoring.opentimestamps", "opentimestamps")],
)
def test_a_missing_extra_is_a_clear_import_error(
    monkeypatch: pytest.MonkeyPatch, module: str, hidden: str
) -> None:
    # A None entry in sys.modules makes any import of that name fail, as if not installed.
    for name in [m for m in sys.modules if m == hidden or m.startswith(hidden + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, hidden, None)
    monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ImportError, match=r"pip install 'qward\[anchoring\]'"):
        importlib.import_module(module)
