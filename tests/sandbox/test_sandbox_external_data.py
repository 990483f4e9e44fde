"""Issue 10.1: a model reading the core's keystore through ONNX external data is refused at every
layer on its own (SDK, core, worker), the worker's working directory holds nothing, and a
degraded sandbox is refused unless the operator allows it."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from malicious import external_data_model

from qward.crypto.envelope import seal
from qward.errors import InputError, RuntimeFailure
from qward.protected.auditor import Auditor
from qward.protected.keystore import create_keystore
from qward.protected.models import ModelRegistry
from qward.protected.service import CoreService
from qward.runtime.model_checks import check_onnx_model
from qward.runtime.supervisor import WorkerPolicy, WorkerProcess
from qward.sdk.client import seal_model
from qward.tlog.store import SQLiteLogStore

from conftest import example_bytes

PLACES = ("initializer", "sparse", "attribute", "subgraph")
# Landlock left out, as on a kernel without it: what the other layers hold on their own.
NO_LANDLOCK = WorkerPolicy(allow_degraded=True, unsafe_skip_layers=frozenset({"landlock"}))


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[CoreService]:
    keys = create_keystore(tmp_path, origin="test.example/log")
    store = SQLiteLogStore.open(tmp_path / "log.sqlite")
    auditor = Auditor(store=store, origin=keys.origin, signers=keys.log_signers)
    core = CoreService(
        keys=keys, auditor=auditor, registry=ModelRegistry(tmp_path / "models", policy=NO_LANDLOCK)
    )
    yield core
    core._models.close()


def _start(model: bytes, policy: WorkerPolicy) -> WorkerProcess:
    return WorkerProcess.start(
        model=model, model_sha256=hashlib.sha256(model).hexdigest(), policy=policy
    )


@pytest.mark.parametrize("where", PLACES)
def test_external_data_keystore_leak_is_refused_by_the_pure_check(where: str) -> None:
    with pytest.raises(InputError, match="external data"):
        check_onnx_model(external_data_model(where))


@pytest.mark.parametrize("where", PLACES)
def test_external_data_keystore_leak_is_refused_by_the_sdk(
    where: str, service: CoreService
) -> None:
    with pytest.raises(InputError, match="external data"):
        seal_model(external_data_model(where), trust=service.trust)


@pytest.mark.parametrize("where", ["initializer", "subgraph"])
def test_external_data_keystore_leak_is_refused_by_the_core(
    where: str, service: CoreService, tmp_path: Path
) -> None:
    # Sealed without the SDK's check, as a hostile client would.
    sealed = seal(
        external_data_model(where),
        recipient=service.trust.hpke_recipient,
        content_type="application/onnx",
    )
    with pytest.raises(InputError, match="external data"):
        service.dispatch({"op": "register_model", "name": "leak"}, sealed)
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize("where", PLACES)
def test_external_data_keystore_leak_is_refused_by_the_worker_without_landlock(
    where: str,
) -> None:
    with pytest.raises(InputError, match="external data"):
        _start(external_data_model(where), NO_LANDLOCK)


def test_worker_runs_in_a_fresh_private_empty_directory_removed_at_exit() -> None:
    with _start(example_bytes("iris-mlp.onnx"), WorkerPolicy()) as worker:
        workdir = worker.workdir
        assert workdir is not None and workdir != os.getcwd()
        assert stat.S_IMODE(os.stat(workdir).st_mode) == 0o700
        assert os.listdir(workdir) == []
    assert not os.path.exists(workdir)


def test_degraded_isolation_is_refused_by_default_naming_layers_and_flag() -> None:
    strict = WorkerPolicy(unsafe_skip_layers=frozenset({"landlock"}))
    with pytest.raises(RuntimeFailure, match=r"landlock.*--allow-degraded-isolation"):
        _start(example_bytes("iris-mlp.onnx"), strict)


def test_allowed_degradation_is_still_reported() -> None:
    with _start(example_bytes("iris-mlp.onnx"), NO_LANDLOCK) as worker:
        assert worker.info["isolation"]["degraded"] == ["landlock"]
