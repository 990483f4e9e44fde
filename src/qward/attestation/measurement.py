"""The core's software measurement: one digest over its code, its environment and its config.

Hardware evidence proves which firmware and kernel booted; it says nothing about which qward
build runs on top unless the core measures itself into the evidence. ``core_measurement()``
computes that digest without any device, so a release process can publish it and a verifier can
recompute it from a clean install:

- ``code``: SHA-256 over the sorted listing of every file of the installed ``qward`` package
  (relative path and SHA-256 of its bytes; ``__pycache__`` and ``*.pyc`` are skipped because the
  interpreter writes them at run time);
- ``environment``: SHA-256 over the interpreter (implementation and version) and the sorted
  ``name==version`` of every installed distribution (the locked environment);
- ``extra``: SHA-256 over the sorted listing of the extra files given (the core's config), each
  named by the path exactly as given, so a release entry must name them the same way.

``digest`` is SHA-256 over a domain label and the three component digests, so comparing the
components says which part of two measurements differs. ``pcr_after_extend(digest)`` is what a
freshly reset SHA-256 PCR holds after one TPM2_PCR_Extend of ``digest``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from qward.encoding import canonical_json, domain_hash
from qward.errors import InputError

__all__ = [
    "MAX_MEASURED_FILES",
    "MAX_MEASURED_FILE_BYTES",
    "MEASUREMENT_LABEL",
    "CoreMeasurement",
    "core_measurement",
    "pcr_after_extend",
]

MEASUREMENT_LABEL = "qward/core-measurement/v1"
#: Largest single file measured; the package's largest file is a few kilobytes of example model.
MAX_MEASURED_FILE_BYTES = 64 * 1024 * 1024
#: Most files in one measured tree, so a runaway directory fails instead of hashing forever.
MAX_MEASURED_FILES = 20_000
_CHUNK = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class CoreMeasurement:
    """A core measurement and its components (each 32 bytes, SHA-256)."""

    digest: bytes
    code: bytes
    environment: bytes
    extra: bytes

    def differences(self, other: CoreMeasurement) -> tuple[str, ...]:
        """The names of the components (``code``, ``environment``, ``extra``) that differ."""
        names = ("code", "environment", "extra")
        return tuple(n for n in names if getattr(self, n) != getattr(other, n))

    def to_json(self) -> dict[str, str]:
        """Lower-case hex of the digest and each component, for release entries and logs."""
        return {
            "digest": self.digest.hex(),
            "code": self.code.hex(),
            "environment": self.environment.hex(),
            "extra": self.extra.hex(),
        }


def core_measurement(
    *, extra_paths: Sequence[str | os.PathLike[str]] = (), package_root: Path | None = None
) -> CoreMeasurement:
    """Measure the installed ``qward`` package, the environment and ``extra_paths``.

    ``package_root`` defaults to the directory of the imported ``qward`` package; tests pass a
    copy. Files are read through ``MAX_MEASURED_FILE_BYTES``; an unreadable or oversized file is
    an ``InputError`` rather than a silently smaller measurement.
    """
    root = package_root if package_root is not None else Path(__file__).resolve().parent.parent
    code = _listing_digest("code", _tree_listing(root))
    environment = _listing_digest("environment", _environment_listing())
    extra = _listing_digest("extra", _extra_listing(extra_paths))
    digest = domain_hash(MEASUREMENT_LABEL, code + environment + extra)
    return CoreMeasurement(digest=digest, code=code, environment=environment, extra=extra)


def pcr_after_extend(digest: bytes, initial: bytes = bytes(32)) -> bytes:
    """SHA-256(``initial`` || ``digest``): a SHA-256 PCR's value after extending ``digest``."""
    if len(digest) != 32 or len(initial) != 32:
        raise InputError("a SHA-256 PCR extend takes a 32-byte value and a 32-byte digest")
    return hashlib.sha256(initial + digest).digest()


def _listing_digest(component: str, entries: Iterable[tuple[str, str]]) -> bytes:
    # Canonical JSON of the sorted [name, value] pairs: unambiguous for any path characters.
    listing = sorted(entries)
    names = [name for name, _ in listing]
    if len(set(names)) != len(names):
        raise InputError(f"core measurement: the {component} listing names an entry twice")
    return domain_hash(f"{MEASUREMENT_LABEL}/{component}", canonical_json(listing))


def _tree_listing(root: Path) -> list[tuple[str, str]]:
    if not root.is_dir():
        raise InputError(f"core measurement: package directory {str(root)!r} does not exist")
    entries: list[tuple[str, str]] = []
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".pyc"):
                continue
            path = Path(directory, name)
            entries.append((path.relative_to(root).as_posix(), _file_digest(path)))
            if len(entries) > MAX_MEASURED_FILES:
                raise InputError(f"core measurement: over {MAX_MEASURED_FILES} files under {root}")
    return entries


def _environment_listing() -> list[tuple[str, str]]:
    interpreter = f"{sys.implementation.name} {platform.python_version()}"
    versions = {
        f"{_normalize(d.metadata['Name'] or '')}=={d.version}" for d in metadata.distributions()
    }
    # The pairs carry the distribution in the name so that two copies of one distribution on
    # sys.path at different versions are both listed rather than colliding.
    return [("python", interpreter)] + [(f"dist:{v}", v) for v in versions]


def _normalize(name: str) -> str:
    # PEP 503 normalisation, so "Foo_Bar" and "foo-bar" from different installers agree.
    return re.sub(r"[-_.]+", "-", name).lower()


def _extra_listing(paths: Sequence[str | os.PathLike[str]]) -> list[tuple[str, str]]:
    # Extra files are measured through symlinks: a mounted config (a Kubernetes ConfigMap, say)
    # is a chain of links, and its content is what matters.
    return [(os.fspath(p), _file_digest(Path(p), follow=True)) for p in paths]


def _file_digest(path: Path, *, follow: bool = False) -> str:
    if not follow and path.is_symlink():
        # A link is measured as its target's name: what it points at is measured where it lives.
        return "symlink:" + os.readlink(path)
    hasher = hashlib.sha256()
    total = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                total += len(chunk)
                if total > MAX_MEASURED_FILE_BYTES:
                    raise InputError(
                        f"core measurement: {str(path)!r} is over {MAX_MEASURED_FILE_BYTES} bytes"
                    )
                hasher.update(chunk)
    except OSError as exc:
        raise InputError(f"core measurement: cannot read {str(path)!r}: {exc.strerror}") from None
    return hasher.hexdigest()
