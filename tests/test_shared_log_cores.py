"""Several real protected cores appending to one PostgreSQL log under one log identity.

Each core is a real ``python -m qward.protected`` process with its own state directory (its own
keystore: HPKE and receipt keys), all given the same ``QWARD_LOG_DATABASE`` and the same log
identity file made by ``qward cluster log-identity``. One of them holds the publisher lease.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from qward.errors import QwardError
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import Verifier
from qward.sdk.client import Client, VerifiedRun
from qward.sdk.core_process import CoreProcess
from qward.tlog.note import note_signatures

from conftest import example_bytes, iris_inputs
from postgres_server import PostgresServer

_SCHEMAS = iter(range(1_000_000))


def _qward(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture()
def cluster(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[int], CoreProcess]]:
    schema = f"cluster_{os.getpid()}_{next(_SCHEMAS)}"
    identity = tmp_path / "log-identity.json"
    made = _qward("cluster", "log-identity", "--out", identity, "--origin", "cluster.test/log")
    assert made.returncode == 0, made.stderr
    monkeypatch.setenv("QWARD_LOG_DATABASE", postgres_server.url(schema))
    monkeypatch.setenv("QWARD_LOG_IDENTITY", str(identity))
    monkeypatch.setenv("QWARD_LOG_LEASE_SECONDS", "1")
    started: list[CoreProcess] = []

    def start(n: int) -> CoreProcess:
        monkeypatch.setenv("QWARD_CORE_ID", f"core-{n}")
        core = CoreProcess.start(tmp_path / f"core-{n}")
        started.append(core)
        return core

    yield start
    for core in started:
        core.stop()


def _trust(core: CoreProcess) -> TrustBundle:
    return TrustBundle.from_bytes((core.state_dir / "trust.json").read_bytes())


def _run(core: CoreProcess, model_sha256: str | None = None) -> tuple[str, VerifiedRun]:
    with core.client() as connection:
        sdk = Client(connection, trust=connection.trust())
        if model_sha256 is None:
            model_sha256 = sdk.register(example_bytes("iris-mlp.onnx"), name="iris").model_sha256
        inputs, seed = iris_inputs()
        return model_sha256, sdk.run(model_sha256, inputs, seed=seed)


def _lease(postgres_server: PostgresServer) -> tuple[str, int]:
    url = os.environ["QWARD_LOG_DATABASE"]
    with psycopg.connect(url) as db:
        row = db.execute("SELECT holder, epoch FROM lease").fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def test_three_cores_share_one_log_and_survive_losing_the_publisher(
    cluster: Callable[[int], CoreProcess], postgres_server: PostgresServer, tmp_path: Path
) -> None:
    cores = [cluster(n) for n in range(3)]
    trusts = [_trust(core) for core in cores]
    # One log: the same origin and checkpoint keys. Per core: its own HPKE and receipt keys.
    assert {t.origin for t in trusts} == {"cluster.test/log"}
    assert len({tuple(v.to_vkey() for v in t.log_verifiers) for t in trusts}) == 1
    assert len({t.hpke_recipient.key_id for t in trusts}) == 3
    assert len({k.key_id for t in trusts for k in t.receipt_keys}) == 3

    results: dict[int, list[VerifiedRun]] = {n: [] for n in range(3)}
    models: dict[int, str] = {}

    def load(n: int) -> None:
        model, first = _run(cores[n])
        models[n] = model
        results[n].append(first)
        for _ in range(4):
            results[n].append(_run(cores[n], model)[1])

    threads = [threading.Thread(target=load, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(len(r) == 5 for r in results.values()), "a core's runs did not all finish"
    indices = [r.log_index for runs in results.values() for r in runs]
    assert len(set(indices)) == len(indices)
    # A receipt from any core verifies under any core's trust bundle: they share the log.
    for n, runs in results.items():
        other = Verifier(trust=trusts[(n + 1) % 3])
        assert other.verify(runs[-1].receipt).bundle.index == runs[-1].log_index

    merged = _qward(
        "cluster",
        "trust",
        *(a for c in cores for a in ("--core", c.state_dir / "trust.json")),
        "--out",
        tmp_path / "cluster-trust.json",
    )
    assert merged.returncode == 0, merged.stderr
    bundle = TrustBundle.from_bytes((tmp_path / "cluster-trust.json").read_bytes())
    assert {k.key_id for k in bundle.receipt_keys} == {
        k.key_id for t in trusts for k in t.receipt_keys
    }

    # The shared checkpoint key is not one core's to rotate; its own receipt key is.
    refused = _qward("keys", "rotate", "checkpoint-signing", "--state-dir", cores[0].state_dir)
    assert refused.returncode != 0 and "shared log identity" in refused.stderr
    assert "Traceback" not in refused.stderr
    rotated = _qward("keys", "rotate", "receipt-signing", "--state-dir", cores[0].state_dir)
    assert rotated.returncode == 0, rotated.stderr
    assert _trust(cores[0]).log_verifiers == trusts[0].log_verifiers

    # SIGKILL the publisher: the others go on, one of them taking over the lease.
    holder, epoch = _lease(postgres_server)
    victim = int(holder.split("/")[0].removeprefix("core-"))
    os.kill(cores[victim].pid, signal.SIGKILL)
    for n in range(3):
        if n != victim:
            assert _run(cores[n], models[n])[1].log_index > max(indices)
    new_holder, new_epoch = _lease(postgres_server)
    assert new_epoch > epoch and not new_holder.startswith(f"core-{victim}/")

    # The whole log, written by three cores, passes the audit with the shared keys.
    survivor = cores[(victim + 1) % 3]
    audit = _qward("log", "verify", "--state-dir", survivor.state_dir)
    assert audit.returncode == 0, audit.stderr


def test_cores_fail_closed_while_postgres_is_down_and_recover(
    cluster: Callable[[int], CoreProcess], postgres_server: PostgresServer
) -> None:
    cores = [cluster(n) for n in range(2)]
    models = [_run(core)[0] for core in cores]
    postgres_server.stop()
    try:
        for core, model in zip(cores, models, strict=True):
            with pytest.raises(QwardError) as refused:
                _run(core, model)
            assert refused.value.code == "audit_unavailable"
    finally:
        postgres_server.start()
    # Within a few seconds of the database's return, both cores run and log again.
    for core, model in zip(cores, models, strict=True):
        deadline = time.monotonic() + 30
        while True:
            try:
                run = _run(core, model)[1]
                break
            except QwardError as exc:
                assert exc.code == "audit_unavailable", exc
                assert time.monotonic() < deadline, f"the core did not recover: {exc}"
                time.sleep(0.5)
        assert run.verified.bundle.index == run.log_index


def test_witnesses_cosign_the_shared_log_for_every_core(
    cluster: Callable[[int], CoreProcess], tmp_path: Path
) -> None:
    from test_witness_service import init_witnesses

    from qward.protected.log_identity import LogIdentity
    from qward.tlog.witness_policy import Quorum

    identity = LogIdentity.load(Path(os.environ["QWARD_LOG_IDENTITY"]))
    vkeys = tuple(s.verifier().to_vkey() for s in identity.signers)
    witnesses = init_witnesses(tmp_path, 2, vkeys)
    config = {
        "quorum": 2,
        "witnesses": [{"url": w.url, "keys": [k.to_vkey() for k in w.keys]} for w in witnesses],
    }
    for w in witnesses:
        w.start()
    try:
        for n in range(2):
            (tmp_path / f"core-{n}").mkdir(mode=0o700)
            (tmp_path / f"core-{n}" / "witnesses.json").write_text(json.dumps(config))
        cores = [cluster(n) for n in range(2)]
        for core in cores:
            assert isinstance(_trust(core).witness_policy, Quorum)
        # Runs on both cores, the publisher's and the other's, come back with checkpoints the
        # SDK accepts only with both witnesses' cosignatures (it pinned the 2-of-2 quorum).
        for _ in range(3):
            for core in cores:
                run = _run(core)[1]
                # Two log signatures, then two (Ed25519, ML-DSA-44) from each witness.
                assert len(note_signatures(run.verified.bundle.checkpoint)[1]) == 2 + 2 * 2
    finally:
        for w in witnesses:
            w.stop()
