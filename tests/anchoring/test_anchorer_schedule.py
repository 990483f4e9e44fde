"""The anchorer's schedule, exactly: which notes it anchors, when, and which it leaves alone.

The ledger is a real anvil node; the notes are real signed checkpoints. Only the log is stood in
for by a list (``record`` appends the entry and answers its index, as the auditor does), so that
each test can say precisely which checkpoints were published.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qward.anchoring.base import AnchorProof, anchor_digest
from qward.encoding import canonical_json
from qward.protected.anchor_config import AnchorConfig
from qward.protected.anchor_ledger import EthereumLedger
from qward.protected.anchorer import Anchorer, Schedule

from .anvil_node import CHAIN_ID, DEV_KEY, AnvilNode
from .conftest import signed_checkpoint


class Log:
    """The entries the anchorer appended; ``size`` is where the next one lands."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: list[dict[str, object]] = []
        self.appended = threading.Event()

    def record(self, entry: bytes) -> int:
        self.entries.append(json.loads(entry))
        self.size += 1
        self.appended.set()
        return self.size - 1


def ledger(node: AnvilNode, url: str | None = None) -> EthereumLedger:
    return EthereumLedger(
        AnchorConfig(
            ledger="ethereum",
            rpc_url=url or node.url,
            chain_id=CHAIN_ID,
            private_key=bytes.fromhex(DEV_KEY[2:]),
            private_key_file=Path("anchor.key"),
            every_checkpoints=None,
            interval_seconds=None,
            confirmations=2,
        )
    )


@pytest.fixture()
def reports() -> list[str]:
    return []


def start(
    node: AnvilNode,
    log: Log,
    reports: list[str],
    *,
    every_checkpoints: int | None,
    interval_seconds: float | None,
) -> Anchorer:
    anchorer = Anchorer(
        ledger=ledger(node),
        schedule=Schedule(
            every_checkpoints=every_checkpoints,
            interval_seconds=interval_seconds,
            confirmations=2,
            backoff_initial=0.2,
        ),
        record=log.record,
        report=reports.append,
    )
    anchorer.start()
    return anchorer


@pytest.fixture()
def running() -> Iterator[list[Anchorer]]:
    anchorers: list[Anchorer] = []
    yield anchorers
    for anchorer in anchorers:
        anchorer.stop()


def wait_entries(log: Log, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(log.entries) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(log.entries) >= count


def test_every_n_checkpoints_anchors_the_nth(
    node: AnvilNode, reports: list[str], running: list[Anchorer]
) -> None:
    log = Log(size=4)
    anchorer = start(node, log, reports, every_checkpoints=3, interval_seconds=None)
    running.append(anchorer)
    anchorer.notify(signed_checkpoint(2))
    anchorer.notify(signed_checkpoint(3))
    time.sleep(3)
    assert log.entries == [], "two checkpoints are not yet three"
    third = signed_checkpoint(4)
    anchorer.notify(third)
    wait_entries(log, 1)
    entry = log.entries[0]
    assert (entry["type"], entry["size"], entry["note"]) == ("qward/anchor/v1", 4, third.decode())
    proof = AnchorProof.from_json(canonical_json(entry["proof"]))
    assert proof.digest == anchor_digest(third)
    assert ledger(node).verify(third, proof).time is not None
    assert ledger(node).confirmations(proof) >= 2


def test_checkpoints_of_only_its_own_entries_are_not_counted(
    node: AnvilNode, reports: list[str], running: list[Anchorer]
) -> None:
    log = Log(size=3)
    anchorer = start(node, log, reports, every_checkpoints=1, interval_seconds=None)
    running.append(anchorer)
    anchorer.notify(signed_checkpoint(3))
    wait_entries(log, 1)  # entry 3 anchors checkpoint 3
    anchorer.notify(signed_checkpoint(4))  # covers only that entry
    time.sleep(3)
    assert len(log.entries) == 1
    anchorer.notify(signed_checkpoint(6))  # entry 4 is someone else's (entry 5 too)
    wait_entries(log, 2)
    assert [e["size"] for e in log.entries] == [3, 6]


def test_interval_anchors_only_when_something_is_new(
    node: AnvilNode, reports: list[str], running: list[Anchorer]
) -> None:
    log = Log(size=5)
    anchorer = start(node, log, reports, every_checkpoints=None, interval_seconds=1.5)
    running.append(anchorer)
    time.sleep(2.5)
    assert log.entries == [], "nothing published, nothing to anchor"
    started = time.monotonic()
    anchorer.notify(signed_checkpoint(5))
    wait_entries(log, 1)
    assert log.entries[0]["size"] == 5
    assert time.monotonic() - started < 15


def test_a_wrong_chain_is_reported_and_retried_never_anchored(
    node: AnvilNode, running: list[Anchorer]
) -> None:
    reports: list[str] = []
    log = Log(size=3)
    wrong = EthereumLedger(
        AnchorConfig(
            ledger="ethereum",
            rpc_url=node.url,
            chain_id=1,
            private_key=bytes.fromhex(DEV_KEY[2:]),
            private_key_file=Path("anchor.key"),
            every_checkpoints=1,
            interval_seconds=None,
            confirmations=1,
        )
    )
    anchorer = Anchorer(
        ledger=wrong,
        schedule=Schedule(
            every_checkpoints=1, interval_seconds=None, confirmations=1, backoff_initial=0.1
        ),
        record=log.record,
        report=reports.append,
    )
    running.append(anchorer)
    anchorer.start()
    anchorer.notify(signed_checkpoint(3))
    time.sleep(2)
    assert log.entries == []
    assert len(reports) >= 2 and all("chain 31337, not chain_id 1" in r for r in reports)
    assert all(DEV_KEY[2:] not in r for r in reports)
    started = time.monotonic()
    anchorer.stop()
    assert time.monotonic() - started < 5, "a backing-off anchorer stops at once"
