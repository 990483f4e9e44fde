"""The protected core process: a Unix-socket server around ``CoreService``.

Run as ``python -m qward.protected --state-dir DIR``. The socket is created inside the state
directory with mode 0600, so only the operator's account can reach the core.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socketserver
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from qward import __version__
from qward.core_api import MAX_FRAME_PAYLOAD
from qward.encoding import read_limited
from qward.errors import FormatError, KeystoreError, QwardError
from qward.framing import recv_frame, send_frame
from qward.protected.auditor import Auditor
from qward.protected.keystore import (
    PASSPHRASE_ENV,
    PROTECTION_ENV,
    create_keystore,
    load_keystore,
)
from qward.protected.models import ModelRegistry
from qward.protected.service import CoreService
from qward.protected.tracing import setup_tracing
from qward.tlog.location import log_location, open_log_store
from qward.tlog.witness_client import WitnessClient, load_witness_config
from qward.tlog.witness_policy import WitnessPolicy

__all__ = ["build_service", "main"]

_PR_SET_PDEATHSIG = 1


def build_service(state_dir: Path) -> CoreService:
    """Open (or on first start, create) the keystore, log and model registry in ``state_dir``.

    The log is ``state_dir/log.sqlite`` unless ``QWARD_LOG_DATABASE`` names a PostgreSQL URL.
    ``QWARD_KEYSTORE_PROTECTION=pkcs11`` creates the keystore under a PKCS#11 token, and then
    refuses to start on a keystore that is not.
    """
    passphrase = os.environ.get(PASSPHRASE_ENV) or None
    protection = os.environ.get(PROTECTION_ENV) or "file"
    if protection not in ("file", "pkcs11"):
        raise KeystoreError(f"{PROTECTION_ENV}={protection!r} is not 'file' or 'pkcs11'")
    created = not (state_dir / "keystore.json").exists()
    if created:
        origin = f"qward.local/log/{os.urandom(4).hex()}"
        keys = create_keystore(
            state_dir,
            origin=origin,
            passphrase=passphrase,
            protection="pkcs11" if protection == "pkcs11" else "file",
        )
    else:
        keys = load_keystore(state_dir, passphrase=passphrase)
    if protection == "pkcs11" and keys.protection != "pkcs11":
        # An operator who asked for the HSM must not silently get a key file instead.
        raise KeystoreError(
            f"{PROTECTION_ENV}=pkcs11 but the keystore in {state_dir} is protected by "
            f"{keys.protection!r}"
        )
    store = open_log_store(log_location(state_dir))
    witnesses, policy = _witnesses(state_dir)
    auditor = Auditor(
        store=store, origin=keys.origin, signers=keys.log_signers, witnesses=witnesses
    )
    service = CoreService(keys=keys, auditor=auditor, registry=ModelRegistry(state_dir / "models"))
    if policy is not None:
        service.pin_witnesses(policy)
    if created:
        service.log_admin(
            "keystore-created",
            hpke_key_id=keys.hpke_public.key_id,
            receipt_key_id=keys.receipt_signer.key_id,
        )
    trust_path = state_dir / "trust.json"
    trust_path.write_bytes(service.trust.to_bytes())
    service.log_admin("core-start", pid=os.getpid(), version=__version__)
    return service


def _witnesses(state_dir: Path) -> tuple[WitnessClient | None, WitnessPolicy | None]:
    """The witnesses in ``state_dir/witnesses.json``, if the operator configured any."""
    path = state_dir / "witnesses.json"
    if not path.exists():
        return None, None
    endpoints, policy = load_witness_config(
        read_limited(str(path), limit=1024 * 1024, what="witness config")
    )

    def report(url: str, why: str) -> None:
        # An unreachable witness costs its cosignature, not the run; clients enforce the quorum.
        print(f"qward core: witness {url} did not cosign: {why}", file=sys.stderr, flush=True)

    return WitnessClient(endpoints, on_error=report), policy


class _Handler(socketserver.BaseRequestHandler):
    server: _CoreServer

    def handle(self) -> None:
        while True:
            try:
                header, payload = recv_frame(self.request, max_payload=MAX_FRAME_PAYLOAD)
            except (EOFError, OSError):
                return
            except FormatError as exc:
                send_frame(self.request, {"ok": False, "code": exc.code, "message": str(exc)})
                return
            send_frame(self.request, *self._answer(header, payload))

    def _answer(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            return self.server.service.dispatch(header, payload)
        except QwardError as exc:
            return {"ok": False, "code": exc.code, "message": str(exc)}, b""
        except Exception:
            # The traceback goes to the core's own stderr; the caller gets no internals.
            traceback.print_exc(file=sys.stderr)
            return {
                "ok": False,
                "code": "runtime_failure",
                "message": "internal error in the protected core",
            }, b""


class _CoreServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # The default backlog of 5 makes a burst of new connections from the public server's pool
    # fail with EAGAIN (a Unix socket with a timeout does not wait for room in the backlog).
    request_queue_size = 256

    def __init__(self, path: Path, service: CoreService) -> None:
        self.service = service
        super().__init__(str(path), _Handler)


def _exit_with_parent() -> None:
    # A core started for one CLI command or one `qward serve` must not outlive it, even when the
    # parent is killed before it can stop the core: the kernel sends SIGTERM when the parent dies.
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the protected core process."""
    parser = argparse.ArgumentParser(prog="python -m qward.protected")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started the core exits",
    )
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        _exit_with_parent()
    state_dir: Path = args.state_dir
    setup_tracing()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        service = build_service(state_dir)
    except QwardError as exc:
        print(f"qward core: {exc}", file=sys.stderr)
        return 2
    sock_path = state_dir / "core.sock"
    sock_path.unlink(missing_ok=True)
    old_umask = os.umask(0o177)
    try:
        server = _CoreServer(sock_path, service)
    finally:
        os.umask(old_umask)

    def _stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"qward core ready on {sock_path}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        sock_path.unlink(missing_ok=True)
        service.close()
    return 0
