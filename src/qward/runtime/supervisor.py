"""Starting, talking to and stopping sandboxed workers (used by the protected core).

Every exchange has a deadline: the supervisor waits on the worker's pipe with ``select`` and kills
the worker if it runs over, so a hung or hostile model cannot hang the core.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from qward.encoding import canonical_json, parse_canonical_json
from qward.errors import FormatError, InputError, QwardError, RuntimeFailure
from qward.framing import write_frame
from qward.tensors import Tensor, decode_tensors, encode_tensors

__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_MEMORY_LIMIT",
    "WorkerPolicy",
    "WorkerProcess",
    "worker_env",
]

DEFAULT_MEMORY_LIMIT = 4 * 1024 * 1024 * 1024
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024
# Room for the tensor encoding's per-tensor headers on top of the raw output bytes.
_REPLY_OVERHEAD = 1024 * 1024
_MAX_HEADER = 1024 * 1024
_PREFIX = 12
_DEGRADED_FLAG = "--allow-degraded-isolation"


@dataclass(frozen=True, kw_only=True)
class WorkerPolicy:
    """How the core starts and trusts its workers.

    ``run_as`` is the (uid, gid) workers start as (no supplementary groups); ``allow_degraded``
    accepts a worker whose isolation report lists a layer not in force (the receipt still records
    it); ``max_output_bytes`` caps one run's encoded outputs; ``memory_limit`` is the worker's
    address-space cap. ``unsafe_skip_layers`` is for tests only: it makes the worker skip the named
    isolation layers to show what the other layers hold on their own. The core never sets it, and
    it travels only from this process to the worker, never from a client.
    """

    run_as: tuple[int, int] | None = None
    allow_degraded: bool = False
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    unsafe_skip_layers: frozenset[str] = frozenset()


def worker_env() -> dict[str, str]:
    """The worker's whole environment: single-threaded libraries, nothing secret."""
    env = {
        "ORT_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
        # OpenBLAS (numpy's, and the one PennyLane's scipy brings) reads its own variable first;
        # pinning it too keeps every BLAS call in a worker single-threaded, hence deterministic.
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    for name in ("PYTHONPATH", "VIRTUAL_ENV"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _relay_stderr(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stderr is not None
    with proc.stderr:
        _relay_lines(proc)


def _relay_lines(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(f"[worker {proc.pid}] {line[:4096].decode('utf-8', 'replace').rstrip()}\n")
        sys.stderr.flush()


def _private_workdir(run_as: tuple[int, int] | None) -> str:
    # ONNX Runtime resolves relative paths (external data) against the working directory; the
    # worker gets a fresh empty one of its own instead of the core's state directory.
    path = tempfile.mkdtemp(prefix="qward-worker-")
    # Another uid only needs to enter it (x), never to list or write it: the core keeps no
    # CAP_CHOWN, and a worker has no business writing where it runs.
    os.chmod(path, 0o700 if run_as is None else 0o711)
    return path


def _spawn(policy: WorkerPolicy, workdir: str) -> subprocess.Popen[bytes]:
    # stderr is a pipe, never a file: the worker runs with RLIMIT_FSIZE=0, so writing to a
    # regular file would raise SIGXFSZ and kill it.
    identity: dict[str, Any] = {}
    if policy.run_as is not None:
        identity = {"user": policy.run_as[0], "group": policy.run_as[1], "extra_groups": []}
    return subprocess.Popen(
        [sys.executable, "-m", "qward.runtime.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=worker_env(),
        close_fds=True,
        cwd=workdir,
        **identity,
    )


class _Deadline:
    def __init__(self, stream: BinaryIO, seconds: float) -> None:
        self._fd = stream.fileno()
        self._end = time.monotonic() + seconds

    def read(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            left = self._end - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self._fd, n - got)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)


class _OutputTooLargeError(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


def _read_reply(stream: BinaryIO, seconds: float, max_body: int) -> tuple[dict[str, Any], bytes]:
    reader = _Deadline(stream, seconds)
    prefix = reader.read(_PREFIX)
    head_len, body_len = int.from_bytes(prefix[:4], "big"), int.from_bytes(prefix[4:], "big")
    if head_len > _MAX_HEADER:
        raise FormatError("worker reply header is over the size limit")
    if body_len > max_body:
        # Checked on the announced length, before a byte of the body is read into the core.
        raise _OutputTooLargeError(body_len)
    header = parse_canonical_json(reader.read(head_len), what="worker reply")
    return header, reader.read(body_len)


class WorkerProcess:
    """One sandboxed worker holding one model."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        info: dict[str, Any],
        *,
        policy: WorkerPolicy | None = None,
        workdir: str | None = None,
    ) -> None:
        self._proc = proc
        self.info = info
        self.policy = policy or WorkerPolicy()
        self._workdir = workdir
        self._lock = threading.Lock()
        self._dead: str | None = None
        self._last_record: dict[str, Any] = {}

    @classmethod
    def start(
        cls,
        *,
        model: bytes,
        model_sha256: str,
        policy: WorkerPolicy | None = None,
        timeout: float = 60.0,
        content_type: str = "application/onnx",
        hide: tuple[str, ...] = (),
        probe_unix_socket: str | None = None,
        chat_template: str | None = None,
    ) -> WorkerProcess:
        """Spawn a worker, hand it the model (ONNX, or a ``qward/circuit/v1`` spec when
        ``content_type`` says so) and wait for its sandbox report.

        Unless ``policy.allow_degraded``, a worker reporting any isolation layer not in force is
        killed and a ``RuntimeFailure`` names the layers. ``hide`` are directories the worker
        must not see (the core's state directory); ``probe_unix_socket`` names a socket the
        worker's self-check tries to connect to (it must fail). A GGUF model
        (``application/x-gguf``) may come with ``chat_template``, Jinja text registered with it
        for a GGUF that carries none.
        """
        policy = policy or WorkerPolicy()
        workdir = _private_workdir(policy.run_as)
        try:
            proc = _spawn(policy, workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        threading.Thread(target=_relay_stderr, args=(proc,), daemon=True).start()
        worker = cls(proc, {}, policy=policy, workdir=workdir)
        try:
            worker.info = worker._exchange(
                {
                    "op": "load",
                    "model_sha256": model_sha256,
                    "memory_limit": policy.memory_limit,
                    "max_output_bytes": policy.max_output_bytes,
                    "content_type": content_type,
                    "unsafe_skip_layers": sorted(policy.unsafe_skip_layers),
                    "hide_paths": list(hide),
                    "probe_unix_socket": [probe_unix_socket] if probe_unix_socket else [],
                    **({"chat_template": chat_template} if chat_template is not None else {}),
                },
                model,
                timeout,
            )[0]
            worker._check_isolation()
        except BaseException:
            worker.close()
            raise
        return worker

    def _check_isolation(self) -> None:
        isolation = self.info.get("isolation")
        degraded = isolation.get("degraded") if isinstance(isolation, dict) else None
        if not isinstance(degraded, list):
            raise RuntimeFailure("the worker sent no isolation report; refusing to use it")
        if degraded and not self.policy.allow_degraded:
            raise RuntimeFailure(
                f"worker isolation is degraded ({', '.join(map(str, degraded))} not in force); "
                f"refusing to run models; start the core with {_DEGRADED_FLAG} to accept this"
            )

    @property
    def alive(self) -> bool:
        """Whether the worker can still take requests."""
        return self._dead is None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._proc.pid

    def _exchange(
        self,
        header: dict[str, Any],
        payload: bytes,
        timeout: float,
        *,
        on_interim: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[dict[str, Any], bytes]:
        with self._lock:
            if not self.alive:
                raise RuntimeFailure(f"the worker has died ({self._dead or 'exited'})")
            assert self._proc.stdin is not None and self._proc.stdout is not None
            try:
                write_frame(self._proc.stdin, header, payload)  # type: ignore[arg-type]
                while True:
                    reply, body = _read_reply(
                        self._proc.stdout,  # type: ignore[arg-type]
                        timeout,
                        self.policy.max_output_bytes + _REPLY_OVERHEAD,
                    )
                    # Interim frames (streamed tokens) come only when asked for.
                    if on_interim is None or reply.get("event") != "token" or not reply.get("ok"):
                        break
                    on_interim(reply)
            except _OutputTooLargeError as exc:
                # The unread body is still in the pipe: the worker cannot be reused.
                self._kill("output over the limit")
                raise InputError(
                    f"the model's outputs ({exc.size} bytes) are over the limit of "
                    f"{self.policy.max_output_bytes} bytes (max_output_bytes)"
                ) from None
            except TimeoutError:
                self._kill(f"no answer within {timeout:g} s")
                raise RuntimeFailure(
                    f"the worker did not answer within {timeout:g} s; killed"
                ) from None
            except (EOFError, OSError, QwardError) as exc:
                code = self._kill("crashed")
                raise RuntimeFailure(
                    f"the worker died (exit status {code}, {type(exc).__name__})"
                ) from None
        if not reply.get("ok"):
            cls = (
                InputError
                if reply.get("code") in ("invalid_input", "bad_format")
                else RuntimeFailure
            )
            if header.get("op") == "load":
                self._kill("refused the model")
            raise cls(str(reply.get("message", "worker error")))
        return reply, body

    def run(
        self, tensors: Sequence[Tensor], *, seed: int, timeout: float = 30.0
    ) -> tuple[Tensor, ...]:
        """Run one request; the same tensors and seed always give the same bytes."""
        reply, body = self._exchange({"op": "run", "seed": seed}, encode_tensors(tensors), timeout)
        self._last_record = {k: v for k, v in reply.items() if k != "ok"}
        return decode_tensors(body)

    def generate(
        self,
        request: dict[str, Any],
        *,
        seed: int,
        timeout: float = 120.0,
        on_token: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Generate text with a GGUF worker; ``request`` is ``llm_worker``'s generate payload
        (canonical JSON, reals as ``float.hex()`` text). Returns the generation record.

        With ``on_token``, the worker streams: each sampled token arrives as an interim frame
        (``{"event": "token", "index", "token_id", "text"}``) and is handed to ``on_token``
        before the final frame; ``timeout`` then bounds the wait for each frame.
        """
        header = {"op": "generate", "seed": seed, "stream": on_token is not None}
        _, body = self._exchange(header, canonical_json(request), timeout, on_interim=on_token)
        return parse_canonical_json(body, what="generation record")

    def replay_generation(
        self, record: dict[str, Any], *, timeout: float = 120.0
    ) -> dict[str, Any]:
        """Regenerate ``record`` in the worker: ``{"generation", "divergence"}``, where
        ``divergence`` is ``None`` or names the first differing token index."""
        _, body = self._exchange({"op": "replay_generation"}, canonical_json(record), timeout)
        return parse_canonical_json(body, what="replay result")

    def run_recorded(
        self, tensors: Sequence[Tensor], *, seed: int, timeout: float = 30.0
    ) -> tuple[tuple[Tensor, ...], dict[str, Any]]:
        """Run one request; also return what the worker recorded about it beyond the outputs
        (for a circuit, ``{"circuit": <compiled-circuit record>}``; for ONNX, nothing).

        The caller must hold the worker exclusively, as ``ModelRegistry.borrow`` lends it: the
        record is the one of this worker's latest ``run``.
        """
        outputs = self.run(tensors, seed=seed, timeout=timeout)
        return outputs, self._last_record

    def _kill(self, why: str) -> int | None:
        self._dead = why
        self._proc.kill()
        try:
            return self._proc.wait(5)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self._workdir is not None and self._proc.poll() is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @property
    def workdir(self) -> str | None:
        """The worker's private, empty working directory (``None`` once removed)."""
        return self._workdir

    def close(self) -> None:
        """Close stdin so the worker exits; kill it if it lingers."""
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(2)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._close_pipes()
        self._dead = self._dead or "closed"

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
