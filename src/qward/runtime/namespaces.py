"""The worker's first isolation layers: new namespaces, hidden core paths, no capabilities.

Applied before anything else, while the worker is still single-threaded (``unshare`` of a user
namespace refuses a threaded process). The worker enters new user, mount, UTS, IPC and network
namespaces; in its mount namespace it lays an empty read-only tmpfs over the core's state
directory, ``/run`` and ``/tmp``, so the core's socket cannot even be named (Landlock ABI 7, this
kernel's, does not cover connecting to a named Unix socket); then it gives up every capability,
the ones it holds in its own user namespace included, and clears the bounding set.
"""

from __future__ import annotations

import ctypes
import os

from qward.privileges import (
    PrivilegeError,
    current_capabilities,
    last_capability,
    set_capabilities,
)
from qward.runtime.sandbox import IsolationReport, apply_network_namespace, errno_text

__all__ = ["apply_capability_drop", "apply_namespaces"]

_libc = ctypes.CDLL(None, use_errno=True)

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REC, _MS_PRIVATE = 1 << 14, 1 << 18
_PR_CAPBSET_DROP, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
_ALWAYS_HIDDEN = ("/run", "/tmp")  # noqa: S108 - hidden, not used


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)


def _enter_user_namespace(report: IsolationReport) -> bool:
    uid, gid = os.geteuid(), os.getegid()
    flags = _CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWUTS | _CLONE_NEWIPC | _CLONE_NEWNET
    if _libc.unshare(flags) != 0:
        why = f"unshare failed: {errno_text()}"
        for name in ("user_namespace", "mount_namespace", "uts_ipc_namespaces"):
            report.record(name, False, why)
        return False
    try:
        # The worker keeps its own identity inside: mapping it to root would let a capability
        # it still held in the namespace act on files the real root owns.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as exc:
        report.record("user_namespace", False, f"id maps not written: {exc.strerror}")
        return True
    report.record("user_namespace", True, f"new user namespace, uid {uid} and gid {gid} only")
    report.record("uts_ipc_namespaces", True, "new UTS and IPC namespaces")
    return True


def _mount_tmpfs(path: str) -> str | None:
    flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _libc.mount(b"none", path.encode(), b"tmpfs", flags, b"size=4k,mode=0555") != 0:
        return f"{path}: {errno_text()}"
    return None


def _hide(report: IsolationReport, hide: tuple[str, ...], keep: tuple[str, ...]) -> None:
    if _libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        report.record("mount_namespace", False, f"cannot make mounts private: {errno_text()}")
        return
    failures: list[str] = []
    hidden: list[str] = []
    kept: list[str] = []
    required = {os.path.realpath(p) for p in hide}
    for path in sorted(required | {os.path.realpath(p) for p in _ALWAYS_HIDDEN}):
        if not os.path.isdir(path):
            continue
        if any(k == path or k.startswith(path + os.sep) for k in keep):
            # /run and /tmp are hidden as a precaution; when qward itself is installed under
            # one of them it stays visible (Landlock still allows reading only the code). The
            # core's state directory must always be hidden: that is the layer's promise.
            (failures if path in required else kept).append(f"{path}: holds the worker's code")
            continue
        error = _mount_tmpfs(path)
        if error:
            failures.append(error)
        else:
            hidden.append(path)
    detail = f"empty read-only tmpfs over {', '.join(hidden)}"
    if kept:
        detail += f"; left visible {kept}"
    report.record(
        "mount_namespace", not failures, detail + (f"; not hidden {failures}" if failures else "")
    )


def apply_namespaces(
    report: IsolationReport, *, hide: tuple[str, ...], keep: tuple[str, ...]
) -> None:
    """Enter new user, mount, UTS, IPC and network namespaces and hide ``hide`` (plus ``/run``
    and ``/tmp``) under empty read-only mounts; ``keep`` are paths the worker still needs."""
    if report.skipped("user_namespace"):
        for name in ("mount_namespace", "uts_ipc_namespaces"):
            report.record(name, False, "needs the user namespace, which was skipped")
        return
    if not _enter_user_namespace(report):
        apply_network_namespace(report)  # perhaps a network namespace on its own still works
        return
    report.record("network_namespace", True, "new empty network namespace")
    if not report.skipped("mount_namespace"):
        _hide(report, hide, keep)


def apply_capability_drop(report: IsolationReport) -> None:
    """Clear the bounding and ambient sets, then every effective, permitted and inheritable
    capability; in force only if ``/proc/self/status`` then shows none at all."""
    if report.skipped("capabilities"):
        return
    for cap in range(last_capability() + 1):
        _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    try:
        set_capabilities(())
    except PrivilegeError as exc:
        report.record("capabilities", False, str(exc))
        return
    left = {k: v for k, v in current_capabilities().items() if v}
    if left:
        report.record("capabilities", False, f"still held: {left}")
        return
    report.record(
        "capabilities", True, "none effective, permitted, inheritable, ambient or bounding"
    )
