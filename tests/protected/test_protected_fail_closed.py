"""No audit record, no execution: a log that refuses an append stops the run and its outputs."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from qward.errors import AuditError, InputError
from qward.protected import service as service_module
from qward.protected.auditor import Auditor
from qward.protected.keystore import create_keystore
from qward.protected.models import ModelRegistry
from qward.protected.service import CoreService
from qward.sdk.client import seal_input, seal_model
from qward.tlog.store import SQLiteLogStore

from conftest import example_bytes, iris_inputs


class FaultyStore:
    """A real SQLite log store whose ``sequence`` fails once ``failing`` is set."""

    def __init__(self, store: SQLiteLogStore) -> None:
        self._store = store
        self.failing = False
        self.sequenced: list[bytes] = []

    def sequence(self, entries: Sequence[bytes], *, durable: bool = True) -> list[int]:
        if self.failing:
            raise sqlite3.OperationalError("disk I/O error")
        self.sequenced.extend(entries)
        return self._store.sequence(entries, durable=durable)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture()
def core(tmp_path: Path) -> Iterator[tuple[CoreService, FaultyStore, str]]:
    keys = create_keystore(tmp_path, origin="test.example/log")
    store = FaultyStore(SQLiteLogStore.open(tmp_path / "log.sqlite"))
    auditor = Auditor(store=store, origin=keys.origin, signers=keys.log_signers)  # type: ignore[arg-type]
    service = CoreService(keys=keys, auditor=auditor, registry=ModelRegistry(tmp_path / "models"))
    reply, _ = service.dispatch(
        {"op": "register_model", "name": "iris"},
        seal_model(example_bytes("iris-mlp.onnx"), trust=service.trust),
    )
    yield service, store, reply["model_sha256"]
    service._models.close()


def _run_request(service: CoreService, digest: str) -> tuple[dict[str, Any], bytes]:
    inputs, seed = iris_inputs()
    return {"op": "run", "model_sha256": digest, "seed": seed}, seal_input(
        inputs, trust=service.trust
    )


def test_run_without_log_never_opens_the_input(
    core: tuple[CoreService, FaultyStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, store, digest = core
    opened: list[bytes] = []
    real_open = service_module.open_sealed
    monkeypatch.setattr(
        service_module,
        "open_sealed",
        lambda blob, **kw: opened.append(blob) or real_open(blob, **kw),
    )
    header, payload = _run_request(service, digest)
    store.failing = True
    with pytest.raises(AuditError, match="disk I/O error"):
        service.dispatch(header, payload)
    assert opened == []
    # The log stays failed (fail closed) until the core restarts, even once the disk recovers.
    store.failing = False
    with pytest.raises(AuditError, match="sequencer failed"):
        service.dispatch(*_run_request(service, digest))
    assert opened == []


def test_outputs_are_withheld_if_the_receipt_cannot_be_logged(
    core: tuple[CoreService, FaultyStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, store, digest = core
    ran: list[int] = []
    for worker in service._models.get(digest).pool:
        real_run = worker.run

        def run_then_break_the_log(*args: Any, _real: Any = real_run, **kwargs: Any) -> Any:
            outputs = _real(*args, **kwargs)
            ran.append(1)
            store.failing = True  # the log dies between execution and the receipt append
            return outputs

        monkeypatch.setattr(worker, "run", run_then_break_the_log)
    header, payload = _run_request(service, digest)
    with pytest.raises(AuditError):
        service.dispatch(header, payload)
    assert ran == [1]
    assert not any(b'"qward/receipt/v' in e for e in store.sequenced)


def test_healthy_run_logs_key_use_before_receipt(
    core: tuple[CoreService, FaultyStore, str],
) -> None:
    service, store, digest = core
    before = len(store.sequenced)
    reply, outputs = service.dispatch(*_run_request(service, digest))
    new = store.sequenced[before:]
    assert [b'"qward/key-use/v1"' in new[0], b'"qward/receipt/v2"' in new[1]] == [True, True]
    assert b"unseal-input" in new[0]
    assert reply["ok"] and outputs


def test_unencodable_parameters_are_refused_before_any_key_use(
    core: tuple[CoreService, FaultyStore, str],
) -> None:
    service, store, digest = core
    header, payload = _run_request(service, digest)
    before = len(store.sequenced)
    for bad in ({"temperature": 0.7}, {"blob": "x" * 20_000}, ["not", "an", "object"]):
        with pytest.raises(InputError):
            service.dispatch({**header, "parameters": bad}, payload)
    assert len(store.sequenced) == before


def test_concurrent_commits_share_checkpoints(tmp_path: Path) -> None:
    """Group commit under contention: every returned checkpoint covers the caller's entry."""
    from concurrent.futures import ThreadPoolExecutor

    from qward.tlog.merkle import leaf_hash, verify_inclusion

    keys = create_keystore(tmp_path, origin="test.example/log")
    store = SQLiteLogStore.open(tmp_path / "log.sqlite")
    auditor = Auditor(store=store, origin=keys.origin, signers=keys.log_signers)

    def append(i: int) -> None:
        entry = f"entry {i}".encode()
        (index,) = auditor.record([entry])
        _, checkpoint = auditor.commit(covering=index)
        assert checkpoint.size > index
        verify_inclusion(
            leaf_hash=leaf_hash(entry),
            index=index,
            size=checkpoint.size,
            proof=auditor.inclusion_proof(index, checkpoint.size),
            root=checkpoint.root_hash,
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(append, range(64)))
    store.close()


def test_a_covered_entry_needs_no_new_signature(tmp_path: Path) -> None:
    keys = create_keystore(tmp_path, origin="test.example/log")
    store = FaultyStore(SQLiteLogStore.open(tmp_path / "log.sqlite"))
    published: list[int] = []
    real_publish = store._store.publish
    store.publish = lambda **kw: published.append(1) or real_publish(**kw)  # type: ignore[attr-defined]
    auditor = Auditor(store=store, origin=keys.origin, signers=keys.log_signers)  # type: ignore[arg-type]
    indices = auditor.record([f"entry {i}".encode() for i in range(10)])
    first = auditor.commit(covering=indices[3])
    assert auditor.commit(covering=indices[7]) == first
    assert len(published) == 1
    (late,) = auditor.record([b"one more"])
    assert auditor.commit(covering=late)[1].size == 11 and len(published) == 2


def test_a_failed_run_withdraws_its_announced_receipt(
    core: tuple[CoreService, FaultyStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run announces its receipt once the model has run, so that checkpoints signed meanwhile
    # wait for it; a run that fails after that must withdraw it, or every later checkpoint
    # would wait in vain.
    service, _, digest = core
    header, payload = _run_request(service, digest)

    def broken(*args: object, **kwargs: object) -> None:
        raise InputError("the receipt body could not be built")

    monkeypatch.setattr(service, "_receipt_body", broken)
    with pytest.raises(InputError, match="could not be built"):
        service.dispatch(header, payload)
    sequencer = service._auditor._live()
    assert sequencer._expected == 0
    monkeypatch.undo()
    assert service.dispatch(header, payload)[0]["ok"]
    assert sequencer._expected == 0


def test_closing_the_auditor_closes_its_log_database(tmp_path: Path) -> None:
    keys = create_keystore(tmp_path, origin="test.example/log")
    store = SQLiteLogStore.open(tmp_path / "log.sqlite")
    auditor = Auditor(store=store, origin=keys.origin, signers=keys.log_signers)
    auditor.record([b"an entry"])
    assert (tmp_path / "log.sqlite-wal").exists()
    auditor.close()
    # The last connection closed: SQLite folded the write-ahead log back into the database.
    assert not (tmp_path / "log.sqlite-wal").exists()
    with pytest.raises(AuditError):
        store.size()
    reopened = SQLiteLogStore.open(tmp_path / "log.sqlite")
    assert reopened.entry(0) == b"an entry"
    reopened.close()
