"""The whole path: seal, run in the sandboxed worker, receipt in the log, verify, replay."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qward.core_api import ModelInfo, ReplayResult
from qward.errors import (
    FormatError,
    InputError,
    ProofError,
    QwardError,
    ReplayMismatchError,
    VerificationError,
)
from qward.receipts.receipt import ReceiptBundle
from qward.receipts.verify import Verifier
from qward.sdk.client import Client, verify
from qward.sdk.core_process import CoreProcess
from qward.tensors import Tensor, tensors_digest

from conftest import example_bytes, iris_inputs


def _plain_ort(inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
    session = ort.InferenceSession(
        example_bytes("iris-mlp.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {t.name: t.to_numpy() for t in inputs})


def test_attested_run_matches_plain_onnxruntime(sdk: Client, iris: ModelInfo) -> None:
    inputs, seed = iris_inputs()
    run = sdk.run(iris.model_sha256, inputs, seed=seed)
    labels, probabilities = _plain_ort(inputs)
    outputs = {t.name: t.to_numpy() for t in run.outputs}
    assert outputs["label"].tolist() == labels.tolist() == [0, 1, 2]
    np.testing.assert_allclose(outputs["probabilities"], probabilities, rtol=1e-5)
    body = run.verified.body
    assert body["model"]["sha256"] == hashlib.sha256(example_bytes("iris-mlp.onnx")).hexdigest()
    assert body["input"]["sha256"] == tensors_digest(inputs)
    assert body["output"]["sha256"] == tensors_digest(run.outputs)
    assert body["seed"] == seed
    assert body["runtime"]["session_options"]["intra_op_num_threads"] == 1
    assert body["runtime"]["session_options"]["inter_op_num_threads"] == 1
    assert "onnxruntime" in body["runtime"]["libraries"]
    assert body["runtime"]["platform_class"]
    # Checkpoint-signed (v2) by default: the log's signature on the checkpoint vouches for it.
    assert body["format"] == "qward/receipt/v2" and body["signer"] == {"kind": "checkpoint"}
    assert run.verified.bundle.signature is None
    assert isinstance(body["isolation"]["degraded"], list)


def test_same_request_gives_bit_identical_outputs(sdk: Client, iris: ModelInfo) -> None:
    inputs, seed = iris_inputs()
    first = sdk.run(iris.model_sha256, inputs, seed=seed)
    second = sdk.run(iris.model_sha256, inputs, seed=seed)
    assert first.outputs == second.outputs
    assert first.verified.bundle.index < second.verified.bundle.index
    assert first.verified.body["receipt_id"] != second.verified.body["receipt_id"]


def test_replay_is_bitwise(sdk: Client, iris: ModelInfo) -> None:
    inputs, seed = iris_inputs()
    run = sdk.run(iris.model_sha256, inputs, seed=seed)
    result = sdk.replay(run.receipt, inputs)
    assert result.verdict == "bitwise-identical"
    assert result.outputs == run.outputs


def test_replay_with_other_input_is_refused(sdk: Client, iris: ModelInfo) -> None:
    inputs, seed = iris_inputs()
    run = sdk.run(iris.model_sha256, inputs, seed=seed)
    other = (Tensor.from_numpy("X", inputs[0].to_numpy() + np.float32(0.5)),)
    with pytest.raises(VerificationError, match="not the inputs the receipt records"):
        sdk.replay(run.receipt, other)


def test_core_refuses_replay_whose_input_differs(
    core: CoreProcess, sdk: Client, iris: ModelInfo
) -> None:
    from qward.sdk.client import seal_input

    inputs, seed = iris_inputs()
    run = sdk.run(iris.model_sha256, inputs, seed=seed)
    other = (Tensor.from_numpy("X", inputs[0].to_numpy() * np.float32(2)),)
    with core.client() as raw, pytest.raises(InputError, match="differs from the input"):
        raw.replay(run.receipt, seal_input(other, trust=sdk.trust))


@pytest.fixture(scope="module")
def receipt(sdk: Client, iris: ModelInfo) -> bytes:
    inputs, seed = iris_inputs()
    return sdk.run(iris.model_sha256, inputs, seed=seed).receipt


def test_every_single_byte_change_of_a_receipt_is_detected(sdk: Client, receipt: bytes) -> None:
    verifier = Verifier(trust=sdk.trust)
    verifier.verify(receipt)
    for position in range(len(receipt)):
        damaged = bytearray(receipt)
        damaged[position] ^= 0x01
        with pytest.raises(QwardError):
            verifier.verify(bytes(damaged))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_receipt_damage_is_detected(
    sdk: Client, receipt: bytes, data: st.DataObject
) -> None:
    position = data.draw(st.integers(0, len(receipt) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != receipt[position]))
    damaged = receipt[:position] + bytes([value]) + receipt[position + 1 :]
    with pytest.raises(QwardError):
        verify(damaged, trust=sdk.trust)


def test_receipt_checked_against_model(sdk: Client, receipt: bytes) -> None:
    verified = verify(receipt, trust=sdk.trust)
    model = example_bytes("iris-mlp.onnx")
    Verifier.check_model(verified, model)
    altered = bytearray(model)
    altered[len(altered) // 2] ^= 0x10
    with pytest.raises(VerificationError, match="model digest"):
        Verifier.check_model(verified, bytes(altered))


def test_receipt_from_other_trust_root_is_refused(
    tmp_path_factory: pytest.TempPathFactory, receipt: bytes
) -> None:
    other = CoreProcess.start(tmp_path_factory.mktemp("other-core"))
    try:
        with other.client() as connection:
            other_trust = connection.trust()
        # A v2 receipt is vouched for by its checkpoint, which no pinned log key signed.
        with pytest.raises(QwardError, match="no signature from a known key"):
            verify(receipt, trust=other_trust)
    finally:
        other.stop()


def test_receipt_with_wrong_index_fails_the_proof(sdk: Client, receipt: bytes) -> None:
    bundle = ReceiptBundle.from_bytes(receipt)
    moved = ReceiptBundle(
        body=bundle.body,
        signature=bundle.signature,
        index=bundle.index - 1,
        inclusion_proof=bundle.inclusion_proof,
        checkpoint=bundle.checkpoint,
    )
    with pytest.raises(ProofError):
        verify(moved.to_bytes(), trust=sdk.trust)


def test_sealed_model_tampering_is_refused(sdk: Client) -> None:
    from qward.sdk.client import seal_model

    sealed = bytearray(seal_model(example_bytes("iris-mlp.onnx"), trust=sdk.trust))
    sealed[-40] ^= 0x04
    with pytest.raises(QwardError, match="authentication failed"):
        sdk._core.register_model(bytes(sealed), name="tampered")


def test_bad_inputs_are_named(sdk: Client, iris: ModelInfo) -> None:
    inputs, seed = iris_inputs()
    wrong_name = (Tensor.from_numpy("Y", inputs[0].to_numpy()),)
    with pytest.raises(InputError, match="X"):
        sdk.run(iris.model_sha256, wrong_name, seed=seed)
    wrong_type = (Tensor.from_numpy("X", inputs[0].to_numpy().astype(np.float64)),)
    with pytest.raises(InputError, match="X"):
        sdk.run(iris.model_sha256, wrong_type, seed=seed)
    wrong_shape = (Tensor.from_numpy("X", np.zeros((2, 5), dtype=np.float32)),)
    with pytest.raises(InputError, match="X"):
        sdk.run(iris.model_sha256, wrong_shape, seed=seed)
    with pytest.raises(InputError, match="not registered"):
        sdk.run("0" * 64, inputs, seed=seed)
    with pytest.raises(InputError, match="seed"):
        sdk.run(iris.model_sha256, inputs, seed=-1)
    # The worker is still healthy after all of that.
    assert sdk.run(iris.model_sha256, inputs, seed=seed).outputs


def test_garbage_sealed_input_is_a_format_error(core: CoreProcess, iris: ModelInfo) -> None:
    with core.client() as raw, pytest.raises(FormatError, match="sealed artifact"):
        raw.run(iris.model_sha256, b"plaintext pretending to be sealed", seed=1, parameters={})


def test_tampered_log_row_is_detected_by_log_verify(
    core: CoreProcess, sdk: Client, receipt: bytes
) -> None:
    from qward.tlog.audit import verify_log
    from qward.tlog.store import SQLiteLogStore

    copy = core.state_dir / "log-copy.sqlite"
    with sqlite3.connect(core.state_dir / "log.sqlite") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    store = SQLiteLogStore.open(copy)
    verify_log(store, origin=sdk.trust.origin, verifiers=sdk.trust.log_verifiers)
    store.close()
    index = ReceiptBundle.from_bytes(receipt).index
    with sqlite3.connect(copy) as db:
        (data,) = db.execute("SELECT data FROM entries WHERE idx = ?", (index,)).fetchone()
        db.execute(
            "UPDATE entries SET data = ? WHERE idx = ?",
            (bytes(data).replace(b'"seed":42', b'"seed":43'), index),
        )
    store = SQLiteLogStore.open(copy)
    with pytest.raises(VerificationError):
        verify_log(store, origin=sdk.trust.origin, verifiers=sdk.trust.log_verifiers)
    store.close()


class _LyingCore:
    """A core that reports different replay outputs than the receipt records."""

    def __init__(self, real: Client) -> None:
        self._real = real

    def replay(
        self,
        receipt: bytes,
        sealed_input: bytes,
        original: tuple[Tensor, ...] | None = None,
        issuer_trust: bytes | None = None,
    ) -> ReplayResult:
        honest = self._real._core.replay(receipt, sealed_input, original, issuer_trust)
        altered = (Tensor.from_numpy("label", np.array([2, 1, 0], dtype=np.int64)),)
        # The logged verdict document is the honest one; only the outputs it hands back lie.
        return ReplayResult(
            verdict="bitwise-identical",
            output_sha256=honest.output_sha256,
            expected_sha256=honest.expected_sha256,
            outputs=altered,
            verdict_document=honest.verdict_document,
        )


def test_client_rejects_replay_outputs_that_differ(sdk: Client, receipt: bytes) -> None:
    inputs, _ = iris_inputs()
    lying = Client(_LyingCore(sdk), trust=sdk.trust)  # type: ignore[arg-type]
    with pytest.raises(ReplayMismatchError):
        lying.replay(receipt, inputs)


def test_one_model_has_one_name(sdk: Client, iris: ModelInfo) -> None:
    with pytest.raises(InputError, match="already registered as 'iris-mlp'"):
        sdk.register(example_bytes("iris-mlp.onnx"), name="another-name")
    assert sdk.register(example_bytes("iris-mlp.onnx"), name="iris-mlp").model_sha256 == (
        iris.model_sha256
    )


def test_replay_with_a_tampered_stored_model_is_refused(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A model swapped or altered in the core's store never runs a replay."""
    import os
    import signal

    state = tmp_path_factory.mktemp("swap")
    core = CoreProcess.start(state)
    try:
        with core.client() as connection:
            client = Client(connection, trust=connection.trust())
            info = client.register(example_bytes("iris-mlp.onnx"), name="iris")
            inputs, seed = iris_inputs()
            run = client.run(info.model_sha256, inputs, seed=seed)
            sealed = state / "models" / f"{info.model_sha256}.sealed"
            data = bytearray(sealed.read_bytes())
            data[-30] ^= 0x01
            sealed.write_bytes(bytes(data))
            for pid in _children(core.pid):  # restart the worker so the store is read again
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(QwardError, match=r"authentication failed|died"):
                client.replay(run.receipt, inputs)
            with pytest.raises(QwardError, match="authentication failed"):
                client.replay(run.receipt, inputs)
    finally:
        core.stop()


def _children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{parent}\n" in status:
                pids.append(int(entry.name))
    return pids


def test_a_burst_of_new_core_connections_is_accepted(core: CoreProcess) -> None:
    """Regression: 32 connections opened at once all get through (the listen backlog was 5)."""
    from concurrent.futures import ThreadPoolExecutor

    from qward.sdk.core_client import CoreClient

    def checkpoint(_: int) -> bytes:
        with CoreClient(core.state_dir / "core.sock") as client:
            return client.checkpoint()

    with ThreadPoolExecutor(32) as pool:
        notes = list(pool.map(checkpoint, range(32)))
    assert all(note.startswith(b"qward.local/log/") for note in notes)


def test_a_seed_json_cannot_carry_exactly_is_refused_before_anything_runs(
    sdk: Client, iris: ModelInfo
) -> None:
    """Regression: a seed above 2**53 ran, then failed while its receipt was encoded."""
    inputs, _ = iris_inputs()
    with pytest.raises(InputError, match="seed"):
        sdk.run(iris.model_sha256, inputs, seed=2**53)
    assert sdk.run(iris.model_sha256, inputs, seed=2**53 - 1).verified.body["seed"] == 2**53 - 1
