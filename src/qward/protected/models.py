"""The core's model registry: sealed models on disk, one sandboxed worker per opened model."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qward.encoding import canonical_json, parse_canonical_json, read_limited
from qward.errors import InputError, NotFoundError
from qward.runtime.supervisor import WorkerProcess

__all__ = ["MAX_MODEL_BYTES", "ModelEntry", "ModelRegistry", "check_digest"]

MAX_MODEL_BYTES = 1024 * 1024 * 1024
_HEX = set("0123456789abcdef")


def check_digest(value: object, what: str) -> str:
    """Return ``value`` if it is a lower-case SHA-256 hex digest."""
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise InputError(f"{what} must be a lower-case SHA-256 hex digest")
    return value


@dataclass(kw_only=True)
class ModelEntry:
    """A registered model; ``worker`` is set once the model has been opened."""

    model_sha256: str
    sealed_sha256: str
    name: str
    worker: WorkerProcess | None = None
    unloaded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class ModelRegistry:
    """Keeps sealed models in ``directory`` and starts their workers on demand."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()
        for meta in sorted(self._dir.glob("*.json")):
            doc = parse_canonical_json(meta.read_bytes(), what=f"model record {meta.name}")
            entry = ModelEntry(
                model_sha256=meta.stem,
                sealed_sha256=str(doc["sealed_sha256"]),
                name=str(doc["name"]),
            )
            self._models[entry.model_sha256] = entry

    def add(self, *, model_sha256: str, sealed: bytes, name: str) -> ModelEntry:
        """Store a sealed model (idempotent for the same plaintext digest)."""
        with self._lock:
            existing = self._models.get(model_sha256)
            if existing is not None:
                if existing.name != name:
                    raise InputError(
                        f"this model is already registered as {existing.name!r}; "
                        "one model has one name"
                    )
                existing.unloaded = False
                return existing
            sealed_sha = hashlib.sha256(sealed).hexdigest()
            (self._dir / f"{model_sha256}.sealed").write_bytes(sealed)
            (self._dir / f"{model_sha256}.json").write_bytes(
                canonical_json({"name": name, "sealed_sha256": sealed_sha})
            )
            entry = ModelEntry(model_sha256=model_sha256, sealed_sha256=sealed_sha, name=name)
            self._models[model_sha256] = entry
            return entry

    def get(self, model_sha256: str) -> ModelEntry:
        """The entry for a digest, or an ``InputError`` naming it."""
        check_digest(model_sha256, "model_sha256")
        entry = self._models.get(model_sha256)
        if entry is None:
            raise NotFoundError(f"model {model_sha256} is not registered with this core")
        return entry

    def worker(self, entry: ModelEntry, open_model: Callable[[bytes], bytes]) -> WorkerProcess:
        """The entry's live worker, starting one (via ``open_model``) if needed."""
        with entry.lock:
            if entry.unloaded:
                raise InputError(f"model {entry.name!r} is unloaded; load it again to use it")
            if entry.worker is None or not entry.worker.alive:
                if entry.worker is not None:
                    entry.worker.close()
                sealed = read_limited(
                    str(self._dir / f"{entry.model_sha256}.sealed"),
                    limit=MAX_MODEL_BYTES + 65536,
                    what="sealed model",
                )
                plaintext = open_model(sealed)
                entry.worker = WorkerProcess.start(model=plaintext, model_sha256=entry.model_sha256)
            return entry.worker

    def unload(self, entry: ModelEntry) -> None:
        """Stop the entry's worker; runs are refused until the model is registered again."""
        with entry.lock:
            entry.unloaded = True
            if entry.worker is not None:
                entry.worker.close()
                entry.worker = None

    def entries(self) -> list[ModelEntry]:
        """Every registered model, in name order."""
        with self._lock:
            return sorted(self._models.values(), key=lambda e: (e.name, e.model_sha256))

    def close(self) -> None:
        """Stop every worker."""
        for entry in self._models.values():
            if entry.worker is not None:
                entry.worker.close()
                entry.worker = None
