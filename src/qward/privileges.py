"""Operating-system privileges: service users, dropping root, capabilities and peer credentials.

Low-level and Linux-only. ``drop_to`` is what a process started as root calls first in ``main``:
it leaves the supplementary groups, switches group and user ids for good, and keeps only the
capabilities it names (the protected core keeps ``CAP_SETUID`` and ``CAP_SETGID`` to start its
workers as another user; the public server keeps none). ``SECBIT_NOROOT`` is set and locked so a
later ``execve`` never gives root's capabilities back.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import socket
import stat
import struct
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qward.errors import QwardError

__all__ = [
    "CAP_SETGID",
    "CAP_SETUID",
    "PrivilegeError",
    "ServiceUser",
    "current_capabilities",
    "drop_to",
    "ensure_user",
    "exit_with_parent",
    "first_unreadable",
    "last_capability",
    "parse_uid_gid",
    "peer_uid",
    "runtime_paths",
    "set_capabilities",
]

CAP_SETGID = 6
CAP_SETUID = 7
_CAPSET_VERSION_3 = 0x20080522
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_SET_NO_NEW_PRIVS = 38
_SECBIT_NOROOT = 1 << 0
_SECBIT_NOROOT_LOCKED = 1 << 1
_PEERCRED = struct.Struct("3i")


class PrivilegeError(QwardError):
    """A user, a permission or a privilege change is not what qward needs."""

    code = "privilege_error"


@dataclass(frozen=True, kw_only=True)
class ServiceUser:
    """A system account a qward process runs as."""

    name: str
    uid: int
    gid: int


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc().prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"prctl({option}) failed: {os.strerror(err)}")


def last_capability() -> int:
    """The highest capability number this kernel knows."""
    return _last_cap()


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text().strip())
    except (OSError, ValueError):
        return 40


def set_capabilities(keep: Iterable[int]) -> None:
    """Make ``keep`` this process's effective and permitted capabilities, nothing inheritable;
    ``PrivilegeError`` if the kernel refuses."""
    _capset(keep)


def _capset(keep: Iterable[int]) -> None:
    mask = 0
    for cap in keep:
        mask |= 1 << cap
    header = _CapHeader(_CAPSET_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in (0, 1):
        bits = (mask >> (32 * word)) & 0xFFFFFFFF
        data[word].effective = bits
        data[word].permitted = bits
        data[word].inheritable = 0
    if _libc().capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capset failed: {os.strerror(ctypes.get_errno())}")


def current_capabilities(pid: int | str = "self") -> dict[str, int]:
    """The ``CapEff``, ``CapPrm`` and ``CapBnd`` masks of a process, from ``/proc``."""
    caps: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            caps[key] = int(value.strip(), 16)
    return caps


def drop_to(user: ServiceUser, *, keep: Sequence[int] = ()) -> None:
    """Become ``user`` for good, keeping only the capabilities in ``keep``.

    Must be called as root. In order: lock ``SECBIT_NOROOT`` (root's uid no longer means all
    capabilities, even after ``execve``), drop every other capability from the bounding set, keep
    the permitted set across the uid change (``PR_SET_KEEPCAPS``), switch groups then uids, and
    finally make ``keep`` the effective and permitted set (nothing inheritable).
    """
    if os.geteuid() != 0:
        raise PrivilegeError(f"dropping to {user.name} needs root, running as uid {os.geteuid()}")
    _prctl(_PR_SET_SECUREBITS, _SECBIT_NOROOT | _SECBIT_NOROOT_LOCKED)
    for cap in range(_last_cap() + 1):
        if cap not in keep:
            _prctl(_PR_CAPBSET_DROP, cap)
    if keep:
        _prctl(_PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    if keep:
        _prctl(_PR_SET_KEEPCAPS, 0)
        _capset(keep)
    else:
        # Without capabilities to keep, nothing this process starts needs to gain privileges.
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if os.getresuid() != (user.uid,) * 3 or os.getresgid() != (user.gid,) * 3:
        raise PrivilegeError(f"could not switch to user {user.name}")


def ensure_user(name: str, *, create: bool) -> ServiceUser:
    """The system user ``name``; created (no home, no login shell) when missing and ``create``."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if not create:
            raise PrivilegeError(f"user {name!r} does not exist") from None
        done = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            why = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
            raise PrivilegeError(f"cannot create user {name!r}: {' '.join(why)}") from None
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise PrivilegeError(f"user {name!r} is root; a service user must not be")
    return ServiceUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def parse_uid_gid(text: str) -> tuple[int, int]:
    """``UID:GID`` (as the core's and the public server's ``--user`` take it) as two ints."""
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or not gid.isdigit():
        raise ValueError(f"expected UID:GID, got {text!r}")
    return int(uid), int(gid)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (``SO_PEERCRED``)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(raw)
    return int(uid)


def runtime_paths() -> list[Path]:
    """What a qward process must be able to read: interpreter, stdlib, site-packages, source."""
    import qward

    paths = sysconfig.get_paths()
    found = [
        Path(sys.executable),
        Path(os.path.realpath(sys.executable)),
        Path(paths["stdlib"]),
        Path(paths["platstdlib"]),
        Path(paths["purelib"]),
        Path(paths["platlib"]),
        Path(qward.__file__).parent,
    ]
    found.extend(Path(p) for p in sys.path if p and Path(p).is_dir())
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def _allows(st: os.stat_result, uid: int, gids: set[int], bits: int) -> bool:
    # Unix checks only the first matching class: owner, then group, then others.
    if st.st_uid == uid:
        return (st.st_mode >> 6) & bits == bits
    if st.st_gid in gids:
        return (st.st_mode >> 3) & bits == bits
    return st.st_mode & bits == bits


def first_unreadable(path: Path, *, uid: int, gids: Iterable[int]) -> Path | None:
    """The first directory or file on the way to ``path`` that ``uid`` cannot use, or ``None``.

    Every ancestor needs search (x) permission, ``path`` itself read permission (and search,
    when it is a directory). Judged from mode bits, so it works when called as root; ACLs are not
    consulted.
    """
    groups = set(gids)
    absolute = Path(os.path.abspath(path))
    for ancestor in reversed(absolute.parents):
        if not _allows(os.stat(ancestor), uid, groups, 0o1):
            return ancestor
    st = os.stat(absolute)
    need = 0o5 if stat.S_ISDIR(st.st_mode) else 0o4
    return None if _allows(st, uid, groups, need) else absolute


_PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """Have the kernel send SIGTERM when the parent exits (call after any uid change, which
    clears the setting); exit now if the parent is already gone."""
    import signal

    parent = os.getppid()
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:
        raise SystemExit(0)
