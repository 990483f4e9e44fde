"""Issues 10.7 and 11.6: a model no worker can load leaves nothing registered and is logged; the
SDK refuses to seal anything that is not a model; an edited key-wrap suite is bad input."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from qward.crypto.envelope import MAGIC, seal
from qward.encoding import canonical_json
from qward.errors import FormatError, InputError
from qward.protected.auditor import Auditor
from qward.protected.keystore import create_keystore
from qward.protected.models import ModelRegistry
from qward.protected.service import CoreService
from qward.sdk.client import Client, seal_model
from qward.suites import KEM_SUITES
from qward.tlog.store import SQLiteLogStore

from conftest import example_bytes


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[CoreService]:
    keys = create_keystore(tmp_path, origin="test.example/log")
    store = SQLiteLogStore.open(tmp_path / "log.sqlite")
    auditor = Auditor(store=store, origin=keys.origin, signers=keys.log_signers)
    core = CoreService(keys=keys, auditor=auditor, registry=ModelRegistry(tmp_path / "models"))
    yield core
    core._models.close()


def _unloadable_model() -> bytes:
    """Valid ONNX (passes onnx.checker) that no worker loads: a string input."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])],
        "strings",
        [helper.make_tensor_value_info("X", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.STRING, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _log_text(tmp_path: Path) -> str:
    with sqlite3.connect(tmp_path / "log.sqlite") as db:
        rows = [r for table in _tables(db) for r in db.execute(f"SELECT * FROM {table}")]
    return " ".join(
        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for r in rows for v in r
    )


def _tables(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]


def test_failed_registration_keeps_nothing_and_is_logged(
    service: CoreService, tmp_path: Path
) -> None:
    sealed = seal_model(_unloadable_model(), trust=service.trust)
    with pytest.raises(InputError, match="unsupported types"):
        service.dispatch({"op": "register_model", "name": "strings"}, sealed)
    assert list((tmp_path / "models").iterdir()) == []
    assert service.dispatch({"op": "models"}, b"")[0]["models"] == []
    assert "model-registration-failed" in _log_text(tmp_path)


def test_damaged_model_record_is_skipped_at_start(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / f"{'a' * 64}.json").write_bytes(b"not json")
    registry = ModelRegistry(models)
    assert registry.entries() == []


@pytest.mark.parametrize(
    "garbage", [b"\x00" * 64, b"root:x:0:0:root:/root:/bin/bash\n", b"{}", b""]
)
def test_seal_model_refuses_what_is_not_a_model(garbage: bytes, service: CoreService) -> None:
    with pytest.raises(InputError):
        seal_model(garbage, trust=service.trust)


def test_seal_model_still_seals_onnx_and_circuits(service: CoreService) -> None:
    assert seal_model(example_bytes("iris-mlp.onnx"), trust=service.trust).startswith(MAGIC)


def test_client_register_of_garbage_leaves_nothing_registered(sdk: Client) -> None:
    before = sdk._core.models()
    with pytest.raises(InputError, match="not an ONNX model"):
        sdk.register(Path("/etc/passwd").read_bytes(), name="garbage")
    with pytest.raises(InputError, match="unsupported types"):
        sdk.register(_unloadable_model(), name="strings")
    assert sdk._core.models() == before


def test_edited_key_wrap_suite_is_a_format_error_naming_the_suite(service: CoreService) -> None:
    blob = seal(b"x", recipient=service.trust.hpke_recipient, content_type="application/onnx")
    at = len(MAGIC) + 4 + int.from_bytes(blob[len(MAGIC) : len(MAGIC) + 4], "big")
    size = int.from_bytes(blob[at : at + 4], "big")
    wrap = json.loads(blob[at + 4 : at + 4 + size])
    for suite in sorted(KEM_SUITES - {wrap["suite"]}):
        edited = canonical_json({**wrap, "suite": suite})
        forged = blob[:at] + len(edited).to_bytes(4, "big") + edited + blob[at + 4 + size :]
        with pytest.raises(FormatError, match=suite):
            service.dispatch({"op": "register_model", "name": "x"}, forged)
