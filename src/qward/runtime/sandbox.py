"""Isolation layers the worker applies to itself, and an honest report of what took effect.

Each layer is applied by the worker to its own process; none needs special hardware. A layer that
cannot be applied is reported in ``degraded`` (and on stderr), never skipped silently, and the
self-check then *tries* the forbidden actions: a layer is only reported enforced when its probe
was refused. Order matters: namespaces and the capability drop (``qward.runtime.namespaces``),
``no_new_privs``, Landlock, rlimits and a coarse seccomp denylist before the model is parsed; the
seccomp allowlist after the model is loaded and warmed up, because loading needs system calls
(file and thread set-up in ONNX Runtime) that inference does not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

import pyseccomp

__all__ = [
    "IsolationReport",
    "Layer",
    "apply_landlock",
    "apply_network_namespace",
    "apply_no_new_privs",
    "apply_rlimits",
    "apply_seccomp",
    "apply_seccomp_denylist",
    "errno_text",
    "probe",
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_PR_SET_NO_NEW_PRIVS = 38

# Landlock (include/uapi/linux/landlock.h); the syscall numbers are shared by all architectures.
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_READ_FILE, _FS_READ_DIR = 1 << 2, 1 << 3
_FS_BITS_BY_ABI = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16, 6: 16, 7: 16}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_SYS_IO_URING_SETUP = 425  # shared by all architectures, like Landlock's


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One isolation layer: whether it is in force and what was observed."""

    enforced: bool
    detail: str


@dataclass(kw_only=True)
class IsolationReport:
    """Per-layer results; ``degraded`` lists every layer not in force."""

    layers: dict[str, Layer] = field(default_factory=dict)
    probes: dict[str, str] = field(default_factory=dict)
    #: Layers to leave out, for tests only (``WorkerPolicy.unsafe_skip_layers``).
    skip: frozenset[str] = frozenset()

    def skipped(self, name: str) -> bool:
        """Whether ``name`` is to be left out; if so it is recorded as not in force."""
        if name not in self.skip:
            return False
        self.record(name, False, "skipped on request (unsafe_skip_layers, a test-only setting)")
        return True

    def record(self, name: str, enforced: bool, detail: str) -> None:
        """Record a layer's outcome, warning loudly on stderr if it is not in force."""
        self.layers[name] = Layer(enforced=enforced, detail=detail)
        if not enforced:
            print(
                f"qward worker: WARNING isolation layer {name} is NOT enforced: {detail}",
                file=sys.stderr,
                flush=True,
            )

    def demote(self, name: str, why: str) -> None:
        """A probe got through: the layer is not what it claimed."""
        if name in self.layers and self.layers[name].enforced:
            self.record(name, False, f"{self.layers[name].detail}; but {why}")

    @property
    def degraded(self) -> tuple[str, ...]:
        """Names of layers not in force, sorted."""
        return tuple(sorted(n for n, layer in self.layers.items() if not layer.enforced))

    def to_json(self) -> dict[str, Any]:
        """The form a receipt records."""
        return {
            "mechanism": "software (Linux namespaces, Landlock, seccomp, rlimits); no hardware TEE",
            "layers": {
                n: {"enforced": layer.enforced, "detail": layer.detail}
                for n, layer in sorted(self.layers.items())
            },
            "probes": dict(sorted(self.probes.items())),
            "degraded": list(self.degraded),
        }


def errno_text() -> str:
    return os.strerror(ctypes.get_errno())


def apply_network_namespace(report: IsolationReport) -> None:
    """Move into a new, empty network namespace (only a down loopback interface)."""
    if report.skipped("network_namespace"):
        return
    if _libc.unshare(_CLONE_NEWNET) == 0:
        report.record("network_namespace", True, "new empty network namespace")
        return
    first = errno_text()
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        report.record("network_namespace", True, "new user and network namespace")
        return
    report.record("network_namespace", False, f"unshare failed: {first}; {errno_text()}")


def apply_no_new_privs(report: IsolationReport) -> None:
    """Forbid gaining privileges through execve (also required by Landlock and seccomp)."""
    if report.skipped("no_new_privs"):
        return
    ok = _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    report.record("no_new_privs", ok, "PR_SET_NO_NEW_PRIVS set" if ok else errno_text())


def apply_rlimits(report: IsolationReport, *, memory_limit: int) -> None:
    """Cap address space, open files and file size; disable core dumps."""
    if report.skipped("rlimits"):
        return
    limits = {"RLIMIT_AS": memory_limit, "RLIMIT_NOFILE": 64, "RLIMIT_FSIZE": 0, "RLIMIT_CORE": 0}
    try:
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, name), (value, value))
    except (OSError, ValueError) as exc:
        report.record("rlimits", False, f"setrlimit failed: {exc}")
        return
    report.record("rlimits", True, ", ".join(f"{k}={v}" for k, v in limits.items()))


def _landlock_abi() -> int:
    return int(
        _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    )


def apply_landlock(report: IsolationReport, *, read_only: list[str]) -> None:
    """Deny all filesystem writes, reads outside ``read_only``, TCP, and (ABI 6+) signals and
    abstract Unix sockets outside the sandbox."""
    if report.skipped("landlock"):
        return
    abi = _landlock_abi()
    if abi < 1:
        report.record("landlock", False, f"Landlock unavailable: {errno_text()}")
        return
    abi = min(abi, max(_FS_BITS_BY_ABI))
    attr = _RulesetAttr(
        handled_access_fs=(1 << _FS_BITS_BY_ABI[abi]) - 1,
        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
        scoped=(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    fd = int(_libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0))
    if fd < 0:
        report.record("landlock", False, f"create_ruleset failed: {errno_text()}")
        return
    try:
        for path in read_only:
            _allow_read(fd, path)
        if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, fd, 0) != 0:
            report.record("landlock", False, f"restrict_self failed: {errno_text()}")
            return
    finally:
        os.close(fd)
    net = "TCP bind/connect denied" if abi >= 4 else "no network rules (ABI < 4)"
    report.record(
        "landlock", True, f"ABI {abi}: read-only {len(read_only)} paths, no writes; {net}"
    )


def _allow_read(ruleset_fd: int, path: str) -> None:
    try:
        parent = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        access = _FS_READ_FILE | (_FS_READ_DIR if os.path.isdir(path) else 0)
        rule = _PathBeneathAttr(allowed_access=access, parent_fd=parent)
        _libc.syscall(
            _SYS_LANDLOCK_ADD_RULE, ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0
        )
    finally:
        os.close(parent)


# System calls inference needs after warm-up (found with strace -f on the worker's run loop),
# plus exit. Everything else fails with EPERM: KILL would be stricter, but EPERM lets the
# worker report a refused call as an error instead of vanishing mid-request.
_ALLOWED_SYSCALLS = (
    "read",
    "write",
    "readv",
    "writev",
    "close",
    "fstat",
    "newfstatat",
    "lseek",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "brk",
    "futex",
    "getpid",
    "gettid",
    "getrandom",
    "clock_gettime",
    "clock_nanosleep",
    "nanosleep",
    "sched_yield",
    "sched_getaffinity",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "exit",
    "exit_group",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "poll",
    "ppoll",
    "restart_syscall",
    "membarrier",
    "rseq",
    "set_robust_list",
    "prlimit64",
    "getrusage",
    "times",
)


def apply_seccomp(report: IsolationReport) -> None:
    """Install the allowlist; from here on no file can be opened and no socket or process made."""
    if report.skipped("seccomp"):
        return
    try:
        rules = pyseccomp.SyscallFilter(defaction=pyseccomp.ERRNO(errno.EPERM))
        allowed = 0
        for name in _ALLOWED_SYSCALLS:
            try:
                rules.add_rule(pyseccomp.ALLOW, name)
                allowed += 1
            except (ValueError, RuntimeError, OSError):
                continue  # not a system call on this architecture
        rules.load()
    except (OSError, RuntimeError, ValueError) as exc:
        report.record("seccomp", False, f"seccomp filter not installed: {exc}")
        return
    report.record("seccomp", True, f"allowlist of {allowed} system calls, default EPERM")


# Refused from the very start, before the model is parsed: kernel attack surface no model needs
# (issue 10.3). New processes are refused too: ``clone`` only with CLONE_THREAD (threads stay
# possible for ONNX Runtime), ``clone3`` reports ENOSYS so the C library falls back to ``clone``.
_DENIED_SYSCALLS = (
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "ptrace",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "fsopen",
    "fsmount",
    "fsconfig",
    "open_tree",
    "mount_setattr",
    "process_vm_readv",
    "process_vm_writev",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "sethostname",
    "setdomainname",
    "personality",
    "socket",
    "socketpair",
    "memfd_create",
    "memfd_secret",
    "fork",
    "vfork",
    "execve",
    "execveat",
)
_CLONE_THREAD = 0x00010000


def apply_seccomp_denylist(report: IsolationReport) -> None:
    """Install the coarse denylist that holds while the model is parsed and warmed up."""
    if report.skipped("seccomp_denylist"):
        return
    try:
        rules = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
        denied = 0
        for name in _DENIED_SYSCALLS:
            try:
                rules.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
                denied += 1
            except (ValueError, RuntimeError, OSError):
                continue  # not a system call on this architecture
        rules.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
        no_thread = pyseccomp.Arg(0, pyseccomp.MASKED_EQ, _CLONE_THREAD, 0)
        rules.add_rule(pyseccomp.ERRNO(errno.EPERM), "clone", no_thread)
        rules.load()
    except (OSError, RuntimeError, ValueError) as exc:
        report.record("seccomp_denylist", False, f"seccomp denylist not installed: {exc}")
        return
    report.record(
        "seccomp_denylist", True, f"{denied} system calls and process creation denied (EPERM)"
    )


def _attempt(report: IsolationReport, name: str, layers: tuple[str, ...], action: Any) -> None:
    try:
        action()
    except OSError as exc:
        report.probes[name] = f"refused: {errno.errorcode.get(exc.errno or 0, exc.errno)}"
        return
    report.probes[name] = "ALLOWED"
    for layer in layers:
        report.demote(layer, f"probe {name} succeeded")


def _connect() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        sock.connect(("127.0.0.1", 9))


def _udp_send() -> None:
    # Landlock's network rules cover TCP only; UDP shows whether the namespace itself isolates.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"x", ("127.0.0.1", 9))


# The probe only tries to create this file; the sandbox must refuse it.
_PROBE_PATH = f"/tmp/qward-probe-{os.getpid()}"  # noqa: S108


def _write_tmp() -> None:
    fd = os.open(_PROBE_PATH, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.unlink(_PROBE_PATH)


def _read_hostname() -> None:
    with open("/etc/hostname", "rb") as handle:
        handle.read(1)


def _spawn() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _memfd() -> None:
    os.close(os.memfd_create("qward-probe"))


def _io_uring() -> None:
    params = ctypes.create_string_buffer(120)
    fd = int(_libc.syscall(_SYS_IO_URING_SETUP, 1, params))
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    os.close(fd)


def _sethostname() -> None:
    name = b"qward-probe"
    if _libc.sethostname(name, len(name)) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _unix_connect(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        sock.connect(path)


def probe(report: IsolationReport, *, stage: str, unix_socket: str | None = None) -> None:
    """Try what each enforced layer forbids; a probe that gets through demotes its layer.

    ``stage="namespaces"`` runs before the seccomp denylist, so it checks the namespaces,
    capabilities and Landlock on their own (``unix_socket`` names a socket in a hidden directory);
    ``"pre-seccomp"`` checks the denylist; ``"final"`` checks everything with seccomp in force.
    """
    if stage == "namespaces":
        if unix_socket is not None:
            _attempt(
                report,
                "connect_unix_socket_in_state_dir",
                ("mount_namespace",),
                lambda: _unix_connect(unix_socket),
            )
        _attempt(report, "sethostname", ("capabilities",), _sethostname)
        _attempt(report, "udp_send_loopback", ("network_namespace",), _udp_send)
        _attempt(report, "tcp_connect_loopback", ("network_namespace", "landlock"), _connect)
        _attempt(report, "write_new_file_in_tmp", ("landlock",), _write_tmp)
        _attempt(report, "read_etc_hostname", ("landlock",), _read_hostname)
        return
    if stage == "pre-seccomp":
        denylist = ("seccomp_denylist",)
        _attempt(report, "fork_before_seccomp", denylist, _spawn)
        _attempt(report, "memfd_create", denylist, _memfd)
        _attempt(report, "io_uring_setup", denylist, _io_uring)
        _attempt(report, "sethostname_before_seccomp", denylist, _sethostname)
        _attempt(report, "socket_before_seccomp", denylist, _connect)
        return
    _attempt(report, "socket_after_seccomp", ("seccomp",), _connect)
    _attempt(report, "open_after_seccomp", ("seccomp",), _read_hostname)
    _attempt(report, "fork_after_seccomp", ("seccomp",), _spawn)
