"""Three independent `qward witness serve` processes cosign a log over HTTP; a 2-of-3 quorum."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from qward.errors import VerificationError
from qward.receipts.trust import TrustBundle
from qward.sdk.core_process import CoreProcess
from qward.tlog.note import Ed25519NoteSigner, NoteVerifier
from qward.tlog.store import SQLiteLogStore
from qward.tlog.witness import add_checkpoint_body
from qward.tlog.witness_client import WitnessClient, WitnessEndpoint
from qward.tlog.witness_policy import Quorum

from conftest import free_port

ORIGIN = "log.example/served"
_PATIENT = 30.0
LOG_SIGNER = Ed25519NoteSigner(name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.generate())


@dataclass
class WitnessProcess:
    state: Path
    port: int
    keys: tuple[NoteVerifier, ...]
    logs: tuple[str, ...] = (LOG_SIGNER.verifier().to_vkey(),)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qward",
                "witness",
                "serve",
                "--state-dir",
                str(self.state),
                "--port",
                str(self.port),
                *(f"--log={vkey}" for vkey in self.logs),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/witness", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("witness did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            assert self.proc.stderr is not None
            self.proc.stderr.close()
            self.proc = None


def init_witnesses(tmp_path: Path, count: int, logs: tuple[str, ...]) -> list[WitnessProcess]:
    """``count`` witnesses with fresh keys, not yet serving."""
    made = []
    for n in range(count):
        state = tmp_path / f"witness{n}"
        init = subprocess.run(
            [
                sys.executable,
                "-m",
                "qward",
                "witness",
                "init",
                "--state-dir",
                str(state),
                "--name",
                f"witness.example/w{n}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        keys = tuple(NoteVerifier.from_vkey(line) for line in init.stdout.split())
        assert {k.algorithm for k in keys} == {0x04, 0x06}
        made.append(WitnessProcess(state=state, port=free_port(), keys=keys, logs=logs))
    return made


def witnessed_core_state(root: Path, count: int, quorum: int) -> tuple[Path, list[WitnessProcess]]:
    """A core state directory configured with ``count`` started witnesses and ``quorum``.

    The core is started once to create its keys (witnesses must know the log's keys); the caller
    starts it again to run with the witnesses, and stops the witnesses.
    """
    state = root / "core"
    CoreProcess.start(state).stop()
    trust = TrustBundle.from_bytes((state / "trust.json").read_bytes())
    witnesses = init_witnesses(root, count, tuple(v.to_vkey() for v in trust.log_verifiers))
    config = {
        "quorum": quorum,
        "witnesses": [{"url": w.url, "keys": [k.to_vkey() for k in w.keys]} for w in witnesses],
    }
    (state / "witnesses.json").write_text(json.dumps(config))
    for w in witnesses:
        w.start()
    return state, witnesses


@pytest.fixture()
def witnesses(tmp_path: Path) -> Iterator[list[WitnessProcess]]:
    started = init_witnesses(tmp_path, 3, (LOG_SIGNER.verifier().to_vkey(),))
    for w in started:
        w.start()
    yield started
    for w in started:
        w.stop()


def _publish(store: SQLiteLogStore, count: int) -> bytes:
    store.sequence([b"entry %d" % store.sequenced_size() for _ in range(count)])
    store.integrate()
    return store.publish(origin=ORIGIN, signers=[LOG_SIGNER])


def test_two_of_three_witnesses_cosign_and_a_fork_is_refused(
    witnesses: list[WitnessProcess], tmp_path: Path
) -> None:
    errors: list[tuple[str, str]] = []
    endpoints = [WitnessEndpoint(url=w.url, keys=w.keys) for w in witnesses]
    policy = Quorum(threshold=2, witnesses=tuple(k for w in witnesses for k in w.keys))
    # A generous timeout: this test is about the quorum, and a loaded CI machine once took
    # longer than the production default of 5 s to answer a first cosigning request.
    with (
        SQLiteLogStore.open(tmp_path / "log.sqlite") as store,
        WitnessClient(
            endpoints, timeout=_PATIENT, on_error=lambda url, why: errors.append((url, why))
        ) as client,
    ):
        first = client.cosign(_publish(store, 3), store.consistency_proof)
        assert not errors, errors
        assert len(policy.check(first)) == 3
        # One witness goes down: 2 of 3 still cosign, and the failure is reported.
        witnesses[2].stop()
        second = client.cosign(_publish(store, 5), store.consistency_proof)
        assert len(policy.check(second)) == 2
        assert [url for url, _ in errors] == [witnesses[2].url]
        # It comes back with its state: a new client (knowing no sizes) learns them from 409s.
        witnesses[2].start()
        with WitnessClient(endpoints, timeout=_PATIENT) as fresh:
            third = fresh.cosign(_publish(store, 2), store.consistency_proof)
            assert len(policy.check(third)) == 3
            # A second witness down: one cosignature is not a quorum.
            witnesses[1].stop()
            witnesses[2].stop()
            lonely = fresh.cosign(_publish(store, 1), store.consistency_proof)
        with pytest.raises(VerificationError, match="requires 2"):
            policy.check(lonely)


def test_a_forked_checkpoint_gets_no_cosignature(
    witnesses: list[WitnessProcess], tmp_path: Path
) -> None:
    endpoints = [WitnessEndpoint(url=w.url, keys=w.keys) for w in witnesses]
    with (
        SQLiteLogStore.open(tmp_path / "honest.sqlite") as honest,
        WitnessClient(endpoints, timeout=_PATIENT) as client,
    ):
        client.cosign(_publish(honest, 4), honest.consistency_proof)
    with SQLiteLogStore.open(tmp_path / "fork.sqlite") as fork:
        fork.sequence([b"rewritten history"] * 6)
        fork.integrate()
        forked = fork.publish(origin=ORIGIN, signers=[LOG_SIGNER])
        # Straight to a witness: the spec's statuses, as HTTP.
        body = add_checkpoint_body(old_size=4, proof=fork.consistency_proof(4, 6), note=forked)
        response = httpx.post(f"{witnesses[0].url}/add-checkpoint", content=body)
        assert response.status_code == 422
        stale = httpx.post(
            f"{witnesses[0].url}/add-checkpoint",
            content=add_checkpoint_body(old_size=0, proof=(), note=forked),
        )
        assert stale.status_code == 409
        assert stale.headers["content-type"].startswith("text/x.tlog.size")
        assert stale.text == "4\n"
        garbage = httpx.post(f"{witnesses[0].url}/add-checkpoint", content=b"old x\n\n")
        assert garbage.status_code == 400 and "Traceback" not in garbage.text
        # Through the client: the fork comes back with no witness line at all.
        with WitnessClient(endpoints, timeout=_PATIENT) as client:
            cosigned = client.cosign(forked, fork.consistency_proof)
        assert cosigned == forked
