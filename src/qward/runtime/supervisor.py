"""Starting, talking to and stopping sandboxed workers (used by the protected core).

Every exchange has a deadline: the supervisor waits on the worker's pipe with ``select`` and kills
the worker if it runs over, so a hung or hostile model cannot hang the core.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from qward.encoding import parse_canonical_json
from qward.errors import FormatError, InputError, QwardError, RuntimeFailure
from qward.framing import write_frame
from qward.tensors import Tensor, decode_tensors, encode_tensors

__all__ = ["DEFAULT_MEMORY_LIMIT", "WorkerPolicy", "WorkerProcess"]

DEFAULT_MEMORY_LIMIT = 4 * 1024 * 1024 * 1024
_MAX_REPLY = 1024 * 1024 * 1024
_PREFIX = 12


@dataclass(frozen=True)
class WorkerPolicy:
    """How workers are started; ``run_as`` is the (uid, gid) they run under, if not the core's.

    Minimal stand-in for the privilege-separation work; the runtime owner's version replaces it.
    """

    run_as: tuple[int, int] | None = None
    allow_degraded: bool = False
    max_output_bytes: int = 64 * 1024 * 1024
    memory_limit: int = DEFAULT_MEMORY_LIMIT


def _worker_env() -> dict[str, str]:
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


def _read_reply(stream: BinaryIO, seconds: float) -> tuple[dict[str, Any], bytes]:
    reader = _Deadline(stream, seconds)
    prefix = reader.read(_PREFIX)
    head_len, body_len = int.from_bytes(prefix[:4], "big"), int.from_bytes(prefix[4:], "big")
    if head_len > 1024 * 1024 or body_len > _MAX_REPLY:
        raise FormatError("worker reply is over the size limit")
    header = parse_canonical_json(reader.read(head_len), what="worker reply")
    return header, reader.read(body_len)


class WorkerProcess:
    """One sandboxed worker holding one model."""

    def __init__(self, proc: subprocess.Popen[bytes], info: dict[str, Any]) -> None:
        self._proc = proc
        self.info = info
        self._lock = threading.Lock()
        self._dead: str | None = None
        self._last_record: dict[str, Any] = {}

    @classmethod
    def start(
        cls,
        *,
        model: bytes,
        model_sha256: str,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        timeout: float = 60.0,
        content_type: str = "application/onnx",
        run_as: tuple[int, int] | None = None,
    ) -> WorkerProcess:
        """Spawn a worker, hand it the model (ONNX, or a ``qward/circuit/v1`` spec when
        ``content_type`` says so) and wait for its sandbox report."""
        # stderr is a pipe, never a file: the worker runs with RLIMIT_FSIZE=0, so writing to a
        # regular file would raise SIGXFSZ and kill it.
        proc = subprocess.Popen(
            [sys.executable, "-m", "qward.runtime.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_worker_env(),
            close_fds=True,
            user=None if run_as is None else run_as[0],
            group=None if run_as is None else run_as[1],
            extra_groups=None if run_as is None else [],
        )
        threading.Thread(target=_relay_stderr, args=(proc,), daemon=True).start()
        worker = cls(proc, {})
        worker.info = worker._exchange(
            {
                "op": "load",
                "model_sha256": model_sha256,
                "memory_limit": memory_limit,
                "content_type": content_type,
            },
            model,
            timeout,
        )[0]
        return worker

    @property
    def alive(self) -> bool:
        """Whether the worker can still take requests."""
        return self._dead is None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._proc.pid

    def _exchange(
        self, header: dict[str, Any], payload: bytes, timeout: float
    ) -> tuple[dict[str, Any], bytes]:
        with self._lock:
            if not self.alive:
                raise RuntimeFailure(f"the worker has died ({self._dead or 'exited'})")
            assert self._proc.stdin is not None and self._proc.stdout is not None
            try:
                write_frame(self._proc.stdin, header, payload)  # type: ignore[arg-type]
                reply, body = _read_reply(self._proc.stdout, timeout)  # type: ignore[arg-type]
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
