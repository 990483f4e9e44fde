"""Gaps in the audit trail: core runs that ended without a clean stop, and clocks going back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from qward.audit import _gap_fields, find_gaps
from qward.receipts.entries import access_entry, admin_entry, key_use_entry, replay_entry
from qward.sdk.core_process import CoreProcess
from qward.tlog.store import SQLiteLogStore

_T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


def _at(seconds: float) -> str:
    return (_T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _start(t: float, pid: int) -> bytes:
    return admin_entry(action="core-start", at=_at(t), details={"pid": pid, "version": "x"})


def _stop(t: float, pid: int) -> bytes:
    return admin_entry(action="core-stop", at=_at(t), details={"pid": pid})


def _call(t: float) -> bytes:
    return access_entry(
        token_id="t1", role="client", method="GET", path="/v1/trust", decision="allow", at=_at(t)
    )


def _log(tmp_path: Path, entries: list[bytes]) -> SQLiteLogStore:
    store = SQLiteLogStore.open(tmp_path / "log.sqlite")
    store.sequence(entries)
    return store


def test_a_start_without_a_stop_before_it_is_an_unclean_stop(tmp_path: Path) -> None:
    entries = [
        _start(0, 10),
        _call(1),
        _stop(2, 10),  # clean
        _start(60, 11),
        _call(61),
        _call(62),  # the last thing run 11 logged before it died
        _start(600, 12),
        _call(601),
    ]
    with _log(tmp_path, entries) as store:
        report = find_gaps(store)
    assert report.has_gaps and report.starts == 3 and report.entries == 8
    (gap,) = report.unclean_stops
    assert (gap.run.start_index, gap.run.pid, gap.run.started_at) == (3, 11, _at(60))
    assert (gap.run.last_index, gap.run.last_at) == (5, _at(62))
    assert (gap.restart_index, gap.restarted_at) == (6, _at(600))
    assert report.open_run is not None and report.open_run.start_index == 6
    assert report.open_run.last_index == 7
    assert report.clock_rollbacks == ()


def test_clean_stops_and_a_running_core_are_no_gap(tmp_path: Path) -> None:
    entries = [_start(0, 1), _call(1), _stop(2, 1), _start(3, 2), _stop(4, 2), _start(5, 3)]
    with _log(tmp_path, entries) as store:
        report = find_gaps(store)
    assert not report.has_gaps and report.unclean_stops == ()
    assert report.open_run is not None and report.open_run.pid == 3


def test_a_clock_going_back_is_flagged_once_per_jump(tmp_path: Path) -> None:
    entries = [_start(0, 1), _call(10), _call(11), _call(9), _call(-3600), _call(-3599)]
    with _log(tmp_path, entries) as store:
        default = find_gaps(store)
        strict = find_gaps(store, tolerance=0)
    # Two seconds back is within the default tolerance (concurrent requests land out of order).
    (back,) = default.clock_rollbacks
    assert (back.index, back.previous_index, back.seconds) == (4, 3, 3609.0)
    assert (back.at, back.previous_at) == (_at(-3600), _at(9))
    assert [r.index for r in strict.clock_rollbacks] == [3, 4]
    assert default.has_gaps and default.unclean_stops == ()


def test_entries_without_time_or_json_are_skipped_not_fatal(tmp_path: Path) -> None:
    entries = [_start(0, 1), b"not json", b'{"type":"x"}', b'{"at":"yesterday"}', _stop(5, 1)]
    with _log(tmp_path, entries) as store:
        report = find_gaps(store)
    assert not report.has_gaps and report.entries == 5 and report.open_run is None


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["start", "stop", "call"]), max_size=30))
def test_unclean_stops_match_a_simple_model(events: list[str]) -> None:
    # Model: every start while a run is open (no stop since the last start) is one unclean stop.
    entries, expected, running = [], 0, False
    for t, event in enumerate(events):
        if event == "start":
            expected += running
            running = True
            entries.append(_start(t, t))
        elif event == "stop":
            running = False
            entries.append(_stop(t, t))
        else:
            entries.append(_call(t))
    store = SQLiteLogStore.open(":memory:")
    try:
        store.sequence(entries)
        report = find_gaps(store)
    finally:
        store.close()
    assert len(report.unclean_stops) == expected
    assert (report.open_run is not None) == running
    assert report.clock_rollbacks == ()


@settings(max_examples=50, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1)))
def test_the_fast_time_read_agrees_with_json(when: datetime) -> None:
    at = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    entries = [
        access_entry(token_id=None, role=None, method="GET", path="/", decision="allow", at=at),
        key_use_entry(key_id="k", purpose="p", object_sha256="0" * 64, request_id="r", at=at),
        replay_entry(receipt_id="r", request_id="q", verdict="v", output_sha256="0", at=at),
        admin_entry(action="core-start", at=at, details={"at": "1999-01-01T00:00:00Z"}),
    ]
    for entry in entries:
        fields = _gap_fields(entry)
        assert fields is not None and fields["at"] == json.loads(entry)["at"] == at


def _qward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qward", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def _touch(core: CoreProcess) -> None:
    """Log something while the core runs, so the run has a last entry after its start."""
    with core.client() as connection:
        connection.record_access(
            token_id=None, role=None, method="GET", path="/probe", decision="deny-401"
        )


def test_a_core_killed_with_sigkill_leaves_a_visible_gap(tmp_path: Path) -> None:
    state = tmp_path / "core"
    first = CoreProcess.start(state)
    _touch(first)
    assert first.stop() == 0  # SIGTERM: an orderly stop, logged as core-stop
    second = CoreProcess.start(state)
    _touch(second)
    with SQLiteLogStore.open(state / "log.sqlite") as store:
        running = find_gaps(store)
    assert not running.has_gaps and running.starts == 2
    assert running.open_run is not None and running.open_run.pid == second.pid
    clean = _qward("audit", "gaps", "--state-dir", str(state))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 unclean stops, 0 clock rollbacks" in clean.stdout

    os.kill(second.pid, signal.SIGKILL)  # no chance to log core-stop
    assert second.stop() == -signal.SIGKILL
    third = CoreProcess.start(state)
    third.stop()

    with SQLiteLogStore.open(state / "log.sqlite") as store:
        report = find_gaps(store)
    (gap,) = report.unclean_stops
    assert gap.run.pid == second.pid and gap.run.start_index == running.open_run.start_index
    assert gap.run.last_index == running.open_run.last_index > gap.run.start_index
    assert gap.restart_index > gap.run.last_index and gap.restarted_at >= gap.run.last_at
    assert report.open_run is None and report.starts == 3

    listed = _qward("audit", "gaps", "--state-dir", str(state))
    assert listed.returncode == 1, listed.stdout + listed.stderr
    assert "1 unclean stops" in listed.stdout and str(second.pid) in listed.stdout
    assert f"#{gap.restart_index}" in listed.stdout and "Traceback" not in listed.stderr
    queried = _qward("audit", "query", "--state-dir", str(state))
    assert queried.returncode == 0 and "0 runs" in queried.stdout
    assert "1 unclean core stops" in queried.stdout and "qward audit gaps" in queried.stdout
    shown = _qward("audit", "query", "--show-gaps", "--state-dir", str(state))
    assert "Core runs without a clean stop" in shown.stdout and str(second.pid) in shown.stdout
