"""Starting and reaching the protected core from the public side.

The public process never imports ``qward.protected``; it starts the core as a separate interpreter
(``python -m qward.protected``) and talks to it only through ``CoreClient``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from qward.errors import CoreUnavailableError, InputError
from qward.sdk.core_client import CoreClient

__all__ = ["CoreProcess", "core_session", "reachable", "socket_path"]


def socket_path(state_dir: Path) -> Path:
    """Where the core for ``state_dir`` listens."""
    return state_dir / "core.sock"


def reachable(path: Path) -> bool:
    """Whether a core answers connections on the Unix socket ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND
# sun_path holds 108 bytes, including the terminating NUL.
_MAX_SOCKET_PATH = 108


def _usable_state_dir(state_dir: Path) -> None:
    """Create ``state_dir`` if needed; refuse, naming it, one that cannot be created or written."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise InputError(f"state directory {state_dir}: {exc.strerror}") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise InputError(f"state directory {state_dir} is not writable")
    if len(os.fsencode(socket_path(state_dir))) >= _MAX_SOCKET_PATH:
        raise InputError(
            f"state directory {state_dir} is too long a path for the core's Unix socket "
            f"(at most {_MAX_SOCKET_PATH - len('/core.sock') - 1} bytes): use a shorter one"
        )


class CoreProcess:
    """A core process started by this process, stopped with ``stop()``."""

    def __init__(self, state_dir: Path, proc: subprocess.Popen[bytes]) -> None:
        self.state_dir = state_dir
        self._proc = proc

    @property
    def pid(self) -> int:
        """The core's process id."""
        return self._proc.pid

    @classmethod
    def start(cls, state_dir: Path, *, timeout: float = 60.0) -> CoreProcess:
        """Start a core on ``state_dir`` and wait until its socket answers."""
        _usable_state_dir(state_dir)
        # The core's log is the operator's alone, whatever the state directory's mode.
        log = os.fdopen(os.open(state_dir / "core.log", _APPEND, 0o600), "ab")
        with log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "qward.protected",
                    "--state-dir",
                    str(state_dir),
                    "--exit-with-parent",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=dict(os.environ),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (state_dir / "core.log").read_text(errors="replace").splitlines()[-3:]
                raise CoreUnavailableError(
                    "the protected core exited during start-up: " + " | ".join(tail)
                )
            if reachable(socket_path(state_dir)):
                return cls(state_dir, proc)
            time.sleep(0.05)
        proc.kill()
        raise CoreUnavailableError(f"the protected core did not start within {timeout:.0f} s")

    def client(self) -> CoreClient:
        """A new client connection to this core."""
        return CoreClient(socket_path(self.state_dir))

    def stop(self, *, timeout: float = 15.0) -> int:
        """Ask the core to stop (SIGTERM), killing it if it does not within ``timeout``."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode


@contextlib.contextmanager
def core_session(state_dir: Path) -> Iterator[CoreClient]:
    """A client to the core on ``state_dir``: the running one, or one started for this block."""
    if reachable(socket_path(state_dir)):
        with CoreClient(socket_path(state_dir)) as client:
            yield client
        return
    core = CoreProcess.start(state_dir)
    try:
        with core.client() as client:
            yield client
    finally:
        core.stop()
