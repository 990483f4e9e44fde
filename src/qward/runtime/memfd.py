"""Model bytes as a sealed, anonymous in-memory file.

llama.cpp loads a model only from a path. Rather than write plaintext weights to disk, the worker
puts them in a ``memfd`` and names it ``/proc/self/fd/N``: a path built from a descriptor the
worker made itself, never one a request could name. The memfd is sealed against writes, growth and
shrinking before anything reads it, so the bytes whose digest was checked are the bytes that run,
even while llama.cpp maps them.

Must run before the seccomp denylist, which refuses ``memfd_create``.
"""

from __future__ import annotations

import fcntl
import os

from qward.errors import RuntimeFailure

__all__ = ["memfd_path", "sealed_memfd"]

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def sealed_memfd(data: bytes, *, name: str = "qward-model") -> int:
    """A new memfd holding exactly ``data``, sealed; the caller owns (and closes) the descriptor."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError as exc:
        raise RuntimeFailure(f"cannot create an in-memory model file: {exc.strerror}") from None
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError as exc:
        os.close(fd)
        raise RuntimeFailure(f"cannot fill the in-memory model file: {exc.strerror}") from None
    return fd


def memfd_path(fd: int) -> str:
    """The ``/proc/self/fd`` path of a sealed memfd; ``RuntimeFailure`` if ``fd`` is not one."""
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise RuntimeFailure("the model descriptor must be a non-negative integer")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise RuntimeFailure("the model descriptor is not a sealable memfd") from None
    if seals & _SEALS != _SEALS:
        raise RuntimeFailure("the model memfd is not sealed against writes")
    return f"/proc/self/fd/{fd}"
