"""The core's model registry: sealed models on disk, one sandboxed worker per opened model."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qward.encoding import canonical_json, parse_canonical_json, read_limited
from qward.errors import InputError, NotFoundError, QwardError
from qward.protected.fair_queue import FairQueue
from qward.runtime.circuit_spec import CIRCUIT_CONTENT_TYPE
from qward.runtime.llm_profile import GGUF_CONTENT_TYPE
from qward.runtime.supervisor import WorkerPolicy, WorkerProcess

__all__ = [
    "DEFAULT_WORKERS",
    "MAX_CHAT_TEMPLATE_BYTES",
    "MAX_MODEL_BYTES",
    "MODEL_CONTENT_TYPES",
    "ONNX_CONTENT_TYPE",
    "ModelEntry",
    "ModelRegistry",
    "check_digest",
]

MAX_MODEL_BYTES = 1024 * 1024 * 1024
ONNX_CONTENT_TYPE = "application/onnx"
#: What a sealed model may hold: an ONNX graph, a declarative ``qward/circuit/v1`` spec or a GGUF
#: language model.
MODEL_CONTENT_TYPES = frozenset({ONNX_CONTENT_TYPE, CIRCUIT_CONTENT_TYPE, GGUF_CONTENT_TYPE})
#: A chat template registered beside a GGUF model that carries none (Jinja text, not secret).
MAX_CHAT_TEMPLATE_BYTES = 64 * 1024
# Each worker is single-threaded for determinism, so parallelism comes from several workers; one
# per core, up to two, unless QWARD_WORKERS_PER_MODEL says otherwise.
DEFAULT_WORKERS = int(os.environ.get("QWARD_WORKERS_PER_MODEL", min(2, os.cpu_count() or 1)))
_HEX = set("0123456789abcdef")


def check_digest(value: object, what: str) -> str:
    """Return ``value`` if it is a lower-case SHA-256 hex digest."""
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise InputError(f"{what} must be a lower-case SHA-256 hex digest")
    return value


@dataclass(kw_only=True)
class ModelEntry:
    """A registered model and, once it has been opened, its pool of sandboxed workers."""

    model_sha256: str
    sealed_sha256: str
    name: str
    content_type: str = ONNX_CONTENT_TYPE
    chat_template: str | None = None
    #: The verified model-signing record (method, identity, signature_sha256), if signed.
    signature: dict[str, str] | None = None
    pool: list[WorkerProcess] = field(default_factory=list)
    idle: FairQueue[WorkerProcess] = field(default_factory=FairQueue)
    unloaded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def worker(self) -> WorkerProcess | None:
        """A live worker of the pool (they all report the same model, profile and sandbox)."""
        return next((w for w in self.pool if w.alive), None)


def _read_record(meta: Path) -> ModelEntry:
    doc = parse_canonical_json(
        read_limited(str(meta), limit=65536, what=f"model record {meta.name}"),
        what=f"model record {meta.name}",
    )
    entry = ModelEntry(
        model_sha256=check_digest(meta.stem, f"model record {meta.name}"),
        sealed_sha256=check_digest(doc.get("sealed_sha256"), f"model record {meta.name}"),
        name=str(doc.get("name")),
        # Records written before circuits existed have no content type: they are ONNX.
        content_type=str(doc.get("content_type", ONNX_CONTENT_TYPE)),
        chat_template=_chat_template(doc.get("chat_template")),
        signature=_signature(doc.get("signature")),
    )
    if entry.content_type not in MODEL_CONTENT_TYPES:
        raise InputError(f"model record {meta.name}: unknown content type")
    return entry


def _chat_template(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value.encode("utf-8")) > MAX_CHAT_TEMPLATE_BYTES:
        raise InputError(f"a chat template is text of at most {MAX_CHAT_TEMPLATE_BYTES} bytes")
    return value


def _signature(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    fields = {"method", "identity", "signature_sha256"}
    if not isinstance(value, dict) or set(value) != fields:
        raise InputError(f"a model's signature record has exactly {sorted(fields)}")
    if not all(isinstance(v, str) for v in value.values()):
        raise InputError("a model's signature record holds strings")
    return dict(value)


def _report(event: str, model_sha256: str, reason: str) -> None:
    # The core's log is its stderr (relayed by its supervisor); one JSON line per event.
    line = canonical_json({"event": event, "model_sha256": model_sha256, "reason": reason})
    print(line.decode("utf-8"), file=sys.stderr, flush=True)


class ModelRegistry:
    """Keeps sealed models in ``directory`` and starts their workers on demand."""

    def __init__(
        self,
        directory: Path,
        *,
        policy: WorkerPolicy = WorkerPolicy(),  # noqa: B008 - frozen, so one shared default is safe
        workers_per_model: int = DEFAULT_WORKERS,
    ) -> None:
        if workers_per_model < 1:
            raise InputError("workers_per_model must be at least 1")
        self._workers_per_model = workers_per_model
        self.policy = policy
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()
        for meta in sorted(self._dir.glob("*.json")):
            # A damaged record is reported and skipped: one bad model never blocks the core.
            try:
                entry = _read_record(meta)
            except QwardError as exc:
                _report("model-record-skipped", meta.stem, str(exc))
                continue
            self._models[entry.model_sha256] = entry

    def add(
        self,
        *,
        model_sha256: str,
        sealed: bytes,
        name: str,
        content_type: str = ONNX_CONTENT_TYPE,
        chat_template: str | None = None,
        signature: dict[str, str] | None = None,
    ) -> ModelEntry:
        """Store a sealed model (idempotent for the same plaintext digest); a GGUF model may
        come with the chat template it is to be prompted with."""
        if content_type not in MODEL_CONTENT_TYPES:
            raise InputError(f"a model cannot be of type {content_type!r}")
        if chat_template is not None and content_type != GGUF_CONTENT_TYPE:
            raise InputError("only a GGUF model takes a chat template")
        _chat_template(chat_template)
        with self._lock:
            existing = self._models.get(model_sha256)
            if existing is not None:
                if existing.name != name:
                    raise InputError(
                        f"this model is already registered as {existing.name!r}; "
                        "one model has one name"
                    )
                if existing.content_type != content_type:
                    raise InputError(
                        f"this model is already registered as {existing.content_type!r}"
                    )
                if existing.chat_template != chat_template:
                    raise InputError("this model is already registered with another chat template")
                if signature is not None and existing.signature != signature:
                    # The latest verified signature wins (an unsigned re-registration of the same
                    # bytes keeps the old one, which still holds for them); the log has each.
                    self._write_record(existing, signature=signature)
                existing.unloaded = False
                return existing
            sealed_sha = hashlib.sha256(sealed).hexdigest()
            (self._dir / f"{model_sha256}.sealed").write_bytes(sealed)
            entry = ModelEntry(
                model_sha256=model_sha256,
                sealed_sha256=sealed_sha,
                name=name,
                content_type=content_type,
                chat_template=chat_template,
            )
            self._write_record(entry, signature=signature)
            self._models[model_sha256] = entry
            return entry

    @property
    def directory(self) -> Path:
        """Where the sealed models and their records are kept (``<state>/models``)."""
        return self._dir

    def _write_record(self, entry: ModelEntry, *, signature: dict[str, str] | None) -> None:
        record: dict[str, object] = {"name": entry.name, "sealed_sha256": entry.sealed_sha256}
        if entry.content_type != ONNX_CONTENT_TYPE:  # ONNX records keep their original bytes
            record["content_type"] = entry.content_type
        if entry.chat_template is not None:
            record["chat_template"] = entry.chat_template
        if signature is not None:
            record["signature"] = signature
        (self._dir / f"{entry.model_sha256}.json").write_bytes(canonical_json(record))
        entry.signature = signature

    def remove(self, entry: ModelEntry) -> None:
        """Forget a model: stop its workers and delete its record and sealed file."""
        with self._lock:
            self._models.pop(entry.model_sha256, None)
        with entry.lock:
            entry.unloaded = True
            self._stop(entry)
        for suffix in (".json", ".sealed"):
            (self._dir / f"{entry.model_sha256}{suffix}").unlink(missing_ok=True)

    def __contains__(self, model_sha256: object) -> bool:
        return model_sha256 in self._models

    def get(self, model_sha256: str) -> ModelEntry:
        """The entry for a digest, or an ``InputError`` naming it."""
        check_digest(model_sha256, "model_sha256")
        entry = self._models.get(model_sha256)
        if entry is None:
            raise NotFoundError(f"model {model_sha256} is not registered with this core")
        return entry

    def ensure_workers(
        self, entry: ModelEntry, open_model: Callable[[bytes], bytes]
    ) -> WorkerProcess:
        """Top the entry's pool up to size (opening the model once if any worker is missing);
        returns one live worker."""
        with entry.lock:
            if entry.unloaded:
                raise InputError(f"model {entry.name!r} is unloaded; load it again to use it")
            for dead in [w for w in entry.pool if not w.alive]:
                dead.close()
            entry.pool = [w for w in entry.pool if w.alive]
            missing = self._workers_per_model - len(entry.pool)
            if missing > 0:
                sealed = read_limited(
                    str(self._dir / f"{entry.model_sha256}.sealed"),
                    limit=MAX_MODEL_BYTES + 65536,
                    what="sealed model",
                )
                plaintext = open_model(sealed)
                for _ in range(missing):
                    worker = WorkerProcess.start(
                        model=plaintext,
                        model_sha256=entry.model_sha256,
                        content_type=entry.content_type,
                        chat_template=entry.chat_template,
                        policy=self.policy,
                        hide=(str(self._dir.resolve().parent),),
                    )
                    entry.pool.append(worker)
                    entry.idle.put(worker)
            return entry.pool[0]

    @contextlib.contextmanager
    def borrow(
        self, entry: ModelEntry, open_model: Callable[[bytes], bytes]
    ) -> Iterator[WorkerProcess]:
        """Lend an idle live worker for one request, waiting if all are busy."""
        # The pool is checked (each worker's liveness is a system call) only when it is short,
        # unloaded, or a dead worker turned up; a live, full pool lends at once.
        check = entry.unloaded or len(entry.pool) < self._workers_per_model
        while True:
            if check:
                self.ensure_workers(entry, open_model)
            worker = entry.idle.get()
            if worker.alive:
                break
            check = True
        try:
            yield worker
        finally:
            # Returned even if it died (killed at a deadline, say): whoever takes it next finds
            # it dead and tops the pool up, so no borrower waits for a worker that is gone.
            entry.idle.put(worker)

    def unload(self, entry: ModelEntry) -> None:
        """Stop the entry's workers; runs are refused until the model is registered again."""
        with entry.lock:
            entry.unloaded = True
            self._stop(entry)

    @staticmethod
    def _stop(entry: ModelEntry) -> None:
        for worker in entry.pool:
            worker.close()
        entry.pool = []

    def by_name(self, name: str) -> ModelEntry:
        """The model registered as ``name`` (the first by digest if several share it)."""
        for entry in self.entries():
            if entry.name == name:
                return entry
        raise NotFoundError(f"model {name!r} is not registered")

    def entries(self) -> list[ModelEntry]:
        """Every registered model, in name order."""
        with self._lock:
            return sorted(self._models.values(), key=lambda e: (e.name, e.model_sha256))

    def close(self) -> None:
        """Stop every worker."""
        for entry in self._models.values():
            with entry.lock:
                self._stop(entry)
