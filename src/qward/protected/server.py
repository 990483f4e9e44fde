"""The protected core process: a Unix-socket server around ``CoreService``.

Run as ``python -m qward.protected --state-dir DIR``. The socket is created inside the state
directory with mode 0600, so only the operator's account can reach the core. Started by a root
``qward serve``, the core drops to its own user first thing (``--user``), keeps only the
capabilities it needs to start workers as ``--worker-user``, listens on ``--socket`` (mode 0660,
in a directory the public server's group can reach) and checks every connection's peer uid
against ``PeerPolicy`` (``SO_PEERCRED``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socketserver
import sys
import threading
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from qward import __version__
from qward.attestation.appraisal import AppraisalPolicy
from qward.core_api import MAX_FRAME_PAYLOAD
from qward.encoding import read_limited
from qward.errors import FormatError, InputError, KeystoreError, QwardError
from qward.framing import recv_frame, send_frame
from qward.heap import settle_heap
from qward.privileges import (
    CAP_SETGID,
    CAP_SETUID,
    PrivilegeError,
    ServiceUser,
    drop_to,
    exit_with_parent,
    parse_uid_gid,
    peer_uid,
)
from qward.protected.anchor_start import read_anchoring, start_anchoring
from qward.protected.attestation import Attester, CoreAttestation, SoftwareOnlyAttester
from qward.protected.attesters import select_attester
from qward.protected.auditor import Auditor
from qward.protected.cluster import publisher_lease, shared_log_identity
from qward.protected.keystore import (
    PROTECTION_ENV,
    create_keystore,
    load_keystore,
    passphrase_from_environment,
)
from qward.protected.models import ModelRegistry
from qward.protected.peer_policy import PeerPolicy, PermissionDeniedError
from qward.protected.personal import PersonalData, PersonalDataPolicy
from qward.protected.pkcs11_kek import PIN_ENV
from qward.protected.service import CoreService
from qward.protected.subjects import SubjectKeys
from qward.protected.tracing import setup_tracing
from qward.receipts.receipt import RECEIPT_SIGNATURES_ENV, ReceiptSigning
from qward.runtime.supervisor import DEFAULT_MAX_OUTPUT_BYTES, WorkerPolicy
from qward.tlog.location import log_location, open_log_store
from qward.tlog.witness_client import WitnessClient, load_witness_config
from qward.tlog.witness_policy import WitnessPolicy

__all__ = ["ALLOW_DEGRADED_ENV", "build_service", "main"]

#: Set to 1 to let a core started by the CLI run models with a degraded sandbox (logged).
ALLOW_DEGRADED_ENV = "QWARD_ALLOW_DEGRADED_ISOLATION"


def build_service(
    state_dir: Path,
    *,
    passphrase: str | None = None,
    worker_policy: WorkerPolicy | None = None,
    attester: Attester | None = None,
    attestation_policy: AppraisalPolicy | None = None,
    receipt_signing: ReceiptSigning = ReceiptSigning.CHECKPOINT,
) -> CoreService:
    """Open (or on first start, create) the keystore, log and model registry in ``state_dir``.

    The log is ``state_dir/log.sqlite`` unless ``QWARD_LOG_DATABASE`` names a PostgreSQL URL,
    which other cores may share: they then take turns publishing under a lease, and sign with
    the log identity that ``QWARD_LOG_IDENTITY`` names (see ``cluster``).
    ``QWARD_KEYSTORE_PROTECTION=pkcs11`` creates the keystore under a PKCS#11 token, and then
    refuses to start on a keystore that is not. Without ``passphrase`` it comes from the
    environment (``QWARD_KEYSTORE_PASSPHRASE`` or ``QWARD_KEYSTORE_PASSPHRASE_FILE``).

    Startup evidence comes from ``attester`` (software-only without one); with
    ``attestation_policy`` the core appraises it and refuses to start if the policy refuses.
    """
    if passphrase is None:
        passphrase = passphrase_from_environment()
    protection = os.environ.get(PROTECTION_ENV) or "file"
    if protection not in ("file", "pkcs11"):
        raise KeystoreError(f"{PROTECTION_ENV}={protection!r} is not 'file' or 'pkcs11'")
    # A wrong anchors.json stops the start, naming the field, before anything is created.
    anchoring = read_anchoring(state_dir)
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
    location = log_location(state_dir)
    keys.log_identity = shared_log_identity(location)
    store = open_log_store(location)
    witnesses, policy = _witnesses(state_dir)
    auditor = Auditor(
        store=store,
        origin=keys.origin,
        signers=keys.log_signers,
        witnesses=witnesses,
        coordination=publisher_lease(location),
        reopen=lambda: open_log_store(location),
    )
    service = CoreService(
        keys=keys,
        auditor=auditor,
        registry=ModelRegistry(state_dir / "models", policy=worker_policy or WorkerPolicy()),
        receipt_signing=receipt_signing,
        personal=_personal_data(state_dir),
    )
    service.attestation = CoreAttestation(
        attester=attester or SoftwareOnlyAttester(),
        record=service.record_published,
        clock=lambda: datetime.now(UTC),
        policy=attestation_policy,
    )
    if policy is not None:
        service.pin_witnesses(policy)
    start_anchoring(anchoring, service, auditor)
    if created:
        service.log_admin(
            "keystore-created",
            hpke_key_id=keys.hpke_public.key_id,
            receipt_key_id=keys.receipt_signer.key_id,
        )
    trust_path = state_dir / "trust.json"
    trust_path.write_bytes(service.trust.to_bytes())
    service.log_admin("core-start", pid=os.getpid(), version=__version__)
    try:
        service.attestation.start(service.trust.to_bytes())
    except QwardError:
        service.close()
        raise
    if worker_policy is not None and worker_policy.allow_degraded:
        # The operator chose to run models under a weaker sandbox: that choice is evidence too.
        service.log_admin("isolation-degraded-allowed", pid=os.getpid())
        print("qward core: WARNING models may run with degraded isolation", file=sys.stderr)
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
        # The kernel vouches for the peer's uid at connect time; it cannot be forged by the peer.
        self.peer_uid = peer_uid(self.request)
        while True:
            try:
                header, payload = recv_frame(self.request, max_payload=MAX_FRAME_PAYLOAD)
            except (EOFError, OSError):
                return
            except FormatError as exc:
                send_frame(self.request, {"ok": False, "code": exc.code, "message": str(exc)})
                return
            send_frame(self.request, *self._answer(header, payload))

    def _emit(self, header: dict[str, Any]) -> None:
        """An interim frame of a streamed reply (a generated token)."""
        send_frame(self.request, header)

    def _answer(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            self._authorize(str(header.get("op")))
            return self.server.service.dispatch(header, payload, self._emit)
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

    def _authorize(self, op: str) -> None:
        try:
            self.server.policy.check(op, self.peer_uid)
        except PermissionDeniedError:
            # One access entry per refused request, so an operator sees who knocked.
            with contextlib.suppress(QwardError):
                self.server.service.dispatch(
                    {
                        "op": "record_access",
                        "token_id": None,
                        "role": f"uid:{self.peer_uid}",
                        "method": "CORE",
                        "path": op[:64],
                        "decision": "forbidden",
                    },
                    b"",
                )
            raise


class _CoreServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # The default backlog of 5 makes a burst of new connections from the public server's pool
    # fail with EAGAIN (a Unix socket with a timeout does not wait for room in the backlog).
    request_queue_size = 256

    def __init__(self, path: Path, service: CoreService, policy: PeerPolicy) -> None:
        self.service = service
        self.policy = policy
        super().__init__(str(path), _Handler)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qward.protected")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started the core exits",
    )
    parser.add_argument("--socket", type=Path, help="socket path (default STATE/core.sock)")
    parser.add_argument("--user", type=parse_uid_gid, help="UID:GID to drop to (started as root)")
    parser.add_argument("--worker-user", type=parse_uid_gid, help="UID:GID workers run as")
    parser.add_argument(
        "--admin-uid", type=int, action="append", default=[], help="uid allowed admin ops"
    )
    parser.add_argument(
        "--api-uid", type=int, action="append", default=[], help="uid allowed data ops"
    )
    parser.add_argument("--keystore-passphrase-fd", type=int, help="read the passphrase here")
    parser.add_argument("--keystore-passphrase-file", type=Path)
    parser.add_argument("--pkcs11-pin-fd", type=int, help="read the PKCS#11 PIN here")
    parser.add_argument(
        "--allow-degraded-isolation",
        action="store_true",
        default=os.environ.get(ALLOW_DEGRADED_ENV) == "1",
        help="run models even when a sandbox layer cannot be applied (logged; stamped in receipts)",
    )
    parser.add_argument(
        "--attestation-policy",
        type=Path,
        help="appraise the core's own startup evidence under this policy; refuse to start if not",
    )
    parser.add_argument(
        "--tpm-tcti",
        default=os.environ.get("QWARD_TPM_TCTI"),
        help="TPM to quote with (TCTI string, e.g. swtpm:host=127.0.0.1,port=2321)",
    )
    parser.add_argument(
        "--measure",
        type=Path,
        action="append",
        default=[],
        help="extra file measured with the core's code (repeatable)",
    )
    parser.add_argument(
        "--receipt-signatures",
        default=os.environ.get(RECEIPT_SIGNATURES_ENV, ReceiptSigning.CHECKPOINT.value),
        help="checkpoint (v2 receipts, the default) or per-receipt (v1: ML-DSA-65 + Ed25519 each)",
    )
    parser.add_argument(
        "--max-output-bytes",
        type=int,
        default=DEFAULT_MAX_OUTPUT_BYTES,
        help="largest encoded output one run may return",
    )
    return parser


def _receipt_signing(value: str) -> ReceiptSigning:
    try:
        return ReceiptSigning(value)
    except ValueError:
        choices = ", ".join(m.value for m in ReceiptSigning)
        raise InputError(
            f"--receipt-signatures / {RECEIPT_SIGNATURES_ENV}: {value!r} is not one of {choices}"
        ) from None


def _policy(path: Path | None) -> AppraisalPolicy | None:
    if path is None:
        return None
    return AppraisalPolicy.from_bytes(
        read_limited(str(path), limit=1024 * 1024, what="attestation policy")
    )


def _read_fd(fd: int, what: str) -> str:
    """A secret written by the launcher into a pipe: never in anyone's environment."""
    with os.fdopen(fd, "rb", closefd=True) as pipe:
        data = pipe.read(4097)
    if not data or len(data) > 4096:
        raise KeystoreError(f"the {what} on fd {fd} is empty or over 4096 bytes")
    return data.decode("utf-8").rstrip("\n")


def _secrets(args: argparse.Namespace) -> str | None:
    """The keystore passphrase (fd, then file, then environment) and, from its fd, the PIN."""
    if args.pkcs11_pin_fd is not None:
        # The PIN stays in this process: workers get an allow-listed environment.
        os.environ[PIN_ENV] = _read_fd(args.pkcs11_pin_fd, "PKCS#11 PIN")
    if args.keystore_passphrase_fd is not None:
        return _read_fd(args.keystore_passphrase_fd, "keystore passphrase")
    if args.keystore_passphrase_file is not None:
        return passphrase_from_environment(
            {"QWARD_KEYSTORE_PASSPHRASE_FILE": str(args.keystore_passphrase_file)}
        )
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the protected core process."""
    args = _parser().parse_args(argv)
    if args.user is not None:
        # First thing: nothing below (keystore, log, workers) runs as root.
        uid, gid = args.user
        keep = (CAP_SETUID, CAP_SETGID) if args.worker_user else ()
        try:
            drop_to(ServiceUser(name="qward-core", uid=uid, gid=gid), keep=keep)
        except (PrivilegeError, OSError) as exc:
            # Say which step failed (a missing capability, say), never run on as root.
            print(f"qward core: cannot drop to {uid}:{gid}: {exc}", file=sys.stderr)
            return 2
    if args.exit_with_parent:
        # A core started for one CLI command or one `qward serve` must not outlive it. After the
        # uid change: the kernel clears the parent-death signal when the uid changes.
        exit_with_parent()
    os.umask(0o077)
    state_dir: Path = args.state_dir
    setup_tracing()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    worker_uid = args.worker_user[0] if args.worker_user else None
    policy = PeerPolicy.from_uids(
        admin=args.admin_uid,
        api=args.api_uid,
        denied=() if worker_uid is None else (worker_uid,),
    )
    try:
        service = build_service(
            state_dir,
            passphrase=_secrets(args),
            worker_policy=WorkerPolicy(
                run_as=args.worker_user,
                allow_degraded=args.allow_degraded_isolation,
                max_output_bytes=args.max_output_bytes,
            ),
            attester=select_attester(tcti=args.tpm_tcti, measured=tuple(args.measure)),
            attestation_policy=_policy(args.attestation_policy),
            receipt_signing=_receipt_signing(args.receipt_signatures),
        )
    except QwardError as exc:
        print(f"qward core: {exc}", file=sys.stderr)
        return 2
    sock_path: Path = args.socket or state_dir / "core.sock"
    sock_path.unlink(missing_ok=True)
    # 0660 when another uid (the public server's group) must connect; the directory and the
    # peer-uid check decide who gets in. Otherwise 0600: only this account.
    old_umask = os.umask(0o117 if args.api_uid else 0o177)
    try:
        server = _CoreServer(sock_path, service, policy)
    finally:
        os.umask(old_umask)

    def _stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    settle_heap()
    print(f"qward core ready on {sock_path}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        sock_path.unlink(missing_ok=True)
        service.close()
    return 0


def _personal_data(state_dir: Path) -> PersonalData | None:
    """Erasable payloads, when the deployment declared personal fields (personal-data.json)."""
    declared = PersonalDataPolicy.load(state_dir)
    return None if declared is None else PersonalData(declared, SubjectKeys(state_dir))
