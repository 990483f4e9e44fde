"""`qward serve` supervises its core and public server (issue 11.13) and keeps secrets in the core.

Runs under any uid (single-user mode when root, through QWARD_UNSAFE_SINGLE_USER from conftest).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from procs import child_running, environ, state

from conftest import Served, start_serve, stop_serve

_SECRET = "correct horse battery staple 7731"


@pytest.fixture()
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("QWARD_KEYSTORE_PASSPHRASE", _SECRET)
    server = start_serve(tmp_path / "state")
    yield server
    stop_serve(server)


def _until(check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {seconds} s")


def _ready(url: str) -> int:
    try:
        return httpx.get(url + "/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def _core(served: Served) -> int:
    pid = child_running(served.proc.pid, "qward.protected")
    assert pid is not None, "no core process under qward serve"
    return pid


def test_serve_restarts_a_killed_core_and_reaps_it(served: Served) -> None:
    first = _core(served)
    assert _ready(served.url) == 200
    os.kill(first, signal.SIGKILL)
    _until(lambda: _ready(served.url) == 503, 10)
    _until(lambda: _ready(served.url) == 200, 30)
    second = _core(served)
    assert second != first
    assert state(first) == "-", "the killed core was left a zombie"
    # The restarted core recorded its start; the unclean stop shows as a gap in the audit.
    gaps = subprocess.run(
        [sys.executable, "-m", "qward", "audit", "gaps", "--state-dir", str(served.state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "unclean" in (gaps.stdout + gaps.stderr).lower(), gaps.stdout + gaps.stderr


def test_serve_restarts_a_killed_public_server(served: Served) -> None:
    public = child_running(served.proc.pid, "qward.public")
    assert public is not None
    os.kill(public, signal.SIGKILL)
    _until(lambda: child_running(served.proc.pid, "qward.public") not in (None, public), 10)
    _until(lambda: _ready(served.url) == 200, 30)
    assert state(public) == "-"


def test_sigint_stops_everything(served: Served) -> None:
    core = _core(served)
    public = child_running(served.proc.pid, "qward.public")
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(30) == 0
    _until(lambda: state(core) == "-" and state(public or core) == "-", 10)


def test_passphrase_reaches_no_environment(served: Served) -> None:
    public = child_running(served.proc.pid, "qward.public")
    assert public is not None
    assert _SECRET.encode() not in environ(public)
    assert b"QWARD_KEYSTORE_PASSPHRASE" not in environ(public)
    assert _SECRET.encode() not in environ(_core(served))
    # The core got the passphrase (through its pipe) and sealed the keystore with it.
    assert b"scrypt" in (served.state / "keystore.json").read_bytes()
