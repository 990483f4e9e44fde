"""The core anchors its checkpoints in a real Ethereum node (anvil), and bundles carry the proofs.

Every test here talks to a real ``anvil`` process over JSON-RPC and to a real core process; nothing
is mocked. Without anvil the module is skipped (see ``anvil_node``).
"""

from __future__ import annotations

import base64
import json
import pickle  # only to show that a config holding a key refuses it
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web3 import HTTPProvider, Web3

from qward.anchoring.base import AnchorProof, AnchorStatus, anchor_digest
from qward.anchoring.ethereum import EthereumAnchor
from qward.audit import verify_evidence
from qward.encoding import canonical_json
from qward.errors import CoreUnavailableError, FormatError, ProofError, VerificationError
from qward.receipts.anchors import verify_bundle_anchors
from qward.receipts.trust import TrustBundle
from qward.sdk.client import Client
from qward.sdk.core_process import CoreProcess
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.store import SQLiteLogStore

from .anvil_node import CHAIN_ID, DEV_KEY, AnvilNode, anvil_binary, free_port

ANCHOR_TYPE = "qward/anchor/v1"
CONFIRMATIONS = 2


def configure(state: Path, node_url: str, /, **fields: Any) -> None:
    """Write the dev account's key (0600) and ``anchors.json`` into a new state directory."""
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    key = state / "anchor.key"
    key.write_text(DEV_KEY + "\n")
    key.chmod(0o600)
    config = {
        "ledger": "ethereum",
        "rpc_url": node_url,
        "chain_id": CHAIN_ID,
        "private_key_file": "anchor.key",
        "every_checkpoints": 1,
        "confirmations": CONFIRMATIONS,
        **fields,
    }
    (state / "anchors.json").write_text(json.dumps(config))


def anchor_entries(state: Path) -> list[tuple[int, dict[str, Any]]]:
    store = SQLiteLogStore.open(state / "log.sqlite")
    try:
        found = [
            (i, json.loads(e))
            for i, e, _ in store.entries_with_leaf_hashes()
            if json.loads(e).get("type") == ANCHOR_TYPE
        ]
    finally:
        store.close()
    return found


def wait_for_anchors(state: Path, count: int, timeout: float = 60.0) -> list[tuple[int, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = anchor_entries(state)
        if len(found) >= count:
            return found
        time.sleep(0.25)
    log = (state / "core.log").read_text(errors="replace")
    raise AssertionError(f"fewer than {count} anchor entries after {timeout} s; core log:\n{log}")


def run_iris(core: CoreProcess, times: int) -> None:
    from conftest import example_bytes, iris_inputs

    with core.client() as connection:
        sdk = Client(connection, trust=connection.trust())
        model = sdk.register(example_bytes("iris-mlp.onnx"), name="iris")
        inputs, seed = iris_inputs()
        for _ in range(times):
            sdk.run(model.model_sha256, inputs, seed=seed)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def anchored(
    node: AnvilNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CoreProcess, Path]]:
    state = tmp_path_factory.mktemp("anchored") / "state"
    configure(state, node.url, every_checkpoints=1)
    core = CoreProcess.start(state)
    run_iris(core, 3)
    wait_for_anchors(state, 2)
    yield core, state
    core.stop()


def ethereum(node: AnvilNode) -> EthereumAnchor:
    return EthereumAnchor(web3=Web3(HTTPProvider(node.url)), min_confirmations=CONFIRMATIONS)


def test_anchor_entries_verify_on_the_node(
    anchored: tuple[CoreProcess, Path], node: AnvilNode
) -> None:
    _, state = anchored
    trust = TrustBundle.from_bytes((state / "trust.json").read_bytes())
    for index, entry in anchor_entries(state):
        note = entry["note"].encode()
        proof = AnchorProof.from_json(canonical_json(entry["proof"]))
        assert proof.digest == anchor_digest(note)
        assert proof.data["chain_id"] == CHAIN_ID
        checkpoint = Checkpoint.from_body(note.split(b"\n\n")[0] + b"\n")
        assert (checkpoint.origin, checkpoint.size) == (trust.origin, entry["size"])
        assert entry["origin"] == trust.origin and entry["size"] <= index
        anchored_time = ethereum(node).verify(note, proof)
        assert anchored_time.status is AnchorStatus.CONFIRMED


def test_an_idle_core_does_not_anchor_its_own_anchor_entries(
    anchored: tuple[CoreProcess, Path],
) -> None:
    _, state = anchored
    wait_for_anchors(state, 2)
    time.sleep(4)  # anchors in flight land, and their entries' checkpoints are published
    before = anchor_entries(state)
    time.sleep(5)
    assert anchor_entries(state) == before
    # Each anchor covers more of the log than the one before: nothing was anchored twice.
    sizes = [entry["size"] for _, entry in before]
    assert sizes == sorted(set(sizes))


def test_the_key_never_reaches_the_core_log_or_the_entries(
    anchored: tuple[CoreProcess, Path],
) -> None:
    _, state = anchored
    secret = DEV_KEY.removeprefix("0x")
    assert secret not in (state / "core.log").read_text(errors="replace").lower()
    store = SQLiteLogStore.open(state / "log.sqlite")
    try:
        assert all(secret.encode() not in e.lower() for _, e, _ in store.entries_with_leaf_hashes())
    finally:
        store.close()


@pytest.fixture(scope="module")
def bundle(anchored: tuple[CoreProcess, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, state = anchored
    time.sleep(2)  # the last anchor entry is covered by a checkpoint
    path = tmp_path_factory.mktemp("bundle") / "evidence.json"
    done = cli("audit", "export", "--state-dir", str(state), "-o", str(path))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "ledger anchors" in done.stdout
    return path


def test_bundle_verifies_offline_and_on_chain(
    bundle: Path, anchored: tuple[CoreProcess, Path], node: AnvilNode
) -> None:
    _, state = anchored
    doc = json.loads(bundle.read_bytes())
    assert doc["anchors"], "the bundle carries anchor proofs"
    trust = str(state / "trust.json")
    offline = cli("audit", "verify", str(bundle), "--trust", trust)
    assert offline.returncode == 0, offline.stderr + offline.stdout
    assert "proof binds the signed note (offline)" in offline.stdout
    online = cli(
        "audit",
        "verify",
        str(bundle),
        "--trust",
        trust,
        "--rpc-url",
        node.url,
        "--confirmations",
        str(CONFIRMATIONS),
    )
    assert online.returncode == 0, online.stderr + online.stdout
    assert f"ethereum chain {CHAIN_ID} block" in online.stdout
    # A node that has not seen enough blocks on top fails the confirmations check, by name.
    strict = cli(
        "audit",
        "verify",
        str(bundle),
        "--trust",
        trust,
        "--rpc-url",
        node.url,
        "--confirmations",
        "100000",
    )
    assert strict.returncode != 0
    assert "confirmations" in strict.stdout + strict.stderr


def _trust(state: Path) -> TrustBundle:
    return TrustBundle.from_bytes((state / "trust.json").read_bytes())


def _anchor_item(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    index = doc["anchors"][0]["index"]
    item = next(i for i in doc["items"] if i["index"] == index)
    return item, json.loads(base64.b64decode(item["entry"]))


def _verify_anchors(doc: dict[str, Any], state: Path, node: AnvilNode | None = None) -> None:
    """The anchor checks alone (a tampered entry would otherwise fail its inclusion first)."""
    checkpoint = Checkpoint.from_body(doc["checkpoint"].encode().split(b"\n\n")[0] + b"\n")
    ledgers = (ethereum(node),) if node is not None else ()
    verify_bundle_anchors(doc, checkpoint, _trust(state), ledgers)


def _with_entry(doc: dict[str, Any], item: dict[str, Any], entry: dict[str, Any]) -> None:
    item["entry"] = base64.b64encode(canonical_json(entry)).decode()


def test_a_tampered_anchor_fails_naming_the_check(
    bundle: Path, anchored: tuple[CoreProcess, Path], node: AnvilNode
) -> None:
    _, state = anchored
    raw = bundle.read_bytes()
    _verify_anchors(json.loads(raw), state, node)  # the untouched bundle passes

    doc = json.loads(raw)
    item, entry = _anchor_item(doc)
    entry["proof"]["digest"] = base64.b64encode(bytes(32)).decode()
    _with_entry(doc, item, entry)
    with pytest.raises(ProofError, match="anchor proof does not bind the anchored note"):
        _verify_anchors(doc, state)
    with pytest.raises(ProofError, match=r"inclusion|root"):
        verify_evidence(canonical_json(doc), trust=_trust(state))

    doc = json.loads(raw)
    item, entry = _anchor_item(doc)
    note = entry["note"].replace(
        "\n" + str(entry["size"]) + "\n", "\n" + str(entry["size"] + 1) + "\n", 1
    )
    entry["note"] = note
    entry["proof"]["digest"] = base64.b64encode(anchor_digest(note.encode())).decode()
    _with_entry(doc, item, entry)
    with pytest.raises(VerificationError, match="not signed by the pinned log keys"):
        _verify_anchors(doc, state)

    doc = json.loads(raw)
    item, entry = _anchor_item(doc)
    entry["proof"]["data"]["tx_hash"] = "0x" + "11" * 32
    _with_entry(doc, item, entry)
    _verify_anchors(doc, state)  # offline, a transaction hash cannot be checked
    with pytest.raises(ProofError, match="ledger does not confirm the anchor"):
        _verify_anchors(doc, state, node)


def test_a_wrong_consistency_proof_fails_the_whole_bundle(
    bundle: Path, anchored: tuple[CoreProcess, Path]
) -> None:
    _, state = anchored
    doc = json.loads(bundle.read_bytes())
    anchor = doc["anchors"][0]
    anchor["consistency_proof"] = [base64.b64encode(bytes(32)).decode()] * max(
        1, len(anchor["consistency_proof"])
    )
    tampered = canonical_json(doc)
    with pytest.raises(ProofError, match="not consistent with the anchored one"):
        verify_evidence(tampered, trust=_trust(state))
    del doc["anchors"]
    with pytest.raises(FormatError, match="no consistency proof"):
        verify_evidence(canonical_json(doc), trust=_trust(state))


def test_a_bundle_without_anchors_still_verifies(
    bundle: Path, anchored: tuple[CoreProcess, Path]
) -> None:
    _, state = anchored
    doc = json.loads(bundle.read_bytes())
    anchor_indices = {a["index"] for a in doc.pop("anchors")}
    doc["items"] = [i for i in doc["items"] if i["index"] not in anchor_indices]
    report = verify_evidence(canonical_json(doc), trust=_trust(state))
    assert report.anchors == () and report.receipts >= 3


def test_node_down_then_up_the_anchorer_retries_while_requests_work(
    tmp_path: Path,
) -> None:
    binary = anvil_binary()
    port = free_port()
    state = tmp_path / "state"
    configure(state, f"http://127.0.0.1:{port}", every_checkpoints=1)
    core = CoreProcess.start(state)
    try:
        started = time.monotonic()
        run_iris(core, 2)  # requests are served while no node answers
        assert time.monotonic() - started < 30
        time.sleep(2)
        assert anchor_entries(state) == []
        assert "attempt failed" in (state / "core.log").read_text()
        node = AnvilNode(binary, port, block_time=1)
        try:
            found = wait_for_anchors(state, 1, timeout=60)
            _, entry = found[0]
            proof = AnchorProof.from_json(canonical_json(entry["proof"]))
            assert ethereum(node).verify(entry["note"].encode(), proof).time is not None
            stopping = time.monotonic()
            assert core.stop() == 0  # clean shutdown: the anchorer first, then the log
            assert time.monotonic() - stopping < 10
        finally:
            node.stop()
    finally:
        core.stop()
    store = SQLiteLogStore.open(state / "log.sqlite")
    try:
        last = json.loads(store.entry(store.size() - 1))
    finally:
        store.close()
    assert last.get("action") == "core-stop"


def test_a_bad_anchors_json_stops_the_core_naming_the_field(tmp_path: Path) -> None:
    state = tmp_path / "state"
    configure(state, "http://127.0.0.1:1", confirmations=0)
    with pytest.raises(CoreUnavailableError, match="field 'confirmations' must be a positive"):
        CoreProcess.start(state)
    assert not (state / "keystore.json").exists(), "refused before anything was created"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"ledger": "bitcoin"}, "ledger"),
        ({"rpc_url": "ftp://x"}, "rpc_url"),
        ({"chain_id": "31337"}, "chain_id"),
        ({"every_checkpoints": 0}, "every_checkpoints"),
        ({"every_checkpoints": None}, "every_checkpoints"),
        ({"interval_seconds": -1}, "interval_seconds"),
        ({"confirmations": True}, "confirmations"),
        ({"private_key_file": "missing.key"}, "private_key_file"),
        ({"private_key": DEV_KEY}, "private_key"),
    ],
)
def test_each_bad_field_is_named(tmp_path: Path, fields: dict[str, Any], named: str) -> None:
    from qward.protected.anchor_config import load_anchor_config

    configure(tmp_path, "http://127.0.0.1:8545", **fields)
    with pytest.raises(FormatError, match=f"'{named}'") as caught:
        load_anchor_config(tmp_path, (tmp_path / "anchors.json").read_bytes())
    assert DEV_KEY.removeprefix("0x") not in str(caught.value)


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    from qward.protected.anchor_config import load_anchor_config

    configure(tmp_path, "http://127.0.0.1:8545")
    (tmp_path / "anchor.key").chmod(0o644)
    with pytest.raises(FormatError, match=r"'private_key_file'.*0600"):
        load_anchor_config(tmp_path, (tmp_path / "anchors.json").read_bytes())
    (tmp_path / "anchor.key").chmod(0o600)
    (tmp_path / "anchor.key").write_text("0x" + "zz" * 32)
    with pytest.raises(FormatError, match="'private_key_file'") as caught:
        load_anchor_config(tmp_path, (tmp_path / "anchors.json").read_bytes())
    assert "zz" not in str(caught.value)
    (tmp_path / "anchor.key").write_text(DEV_KEY)
    config = load_anchor_config(tmp_path, (tmp_path / "anchors.json").read_bytes())
    assert config.private_key == bytes.fromhex(DEV_KEY[2:])
    assert DEV_KEY[2:] not in repr(config).lower()
    with pytest.raises(TypeError):
        pickle.dumps(config)
