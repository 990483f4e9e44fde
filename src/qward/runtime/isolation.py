"""The order the worker's isolation layers go on, in one place.

``enter`` applies everything that does not stop a model from loading (namespaces, capabilities,
no_new_privs, Landlock, rlimits, the seccomp denylist) and probes after each stage; ``lock`` then
installs the seccomp allowlist, once the model is loaded and warmed up, and probes again. The
worker and ``qward doctor``'s self-check (``qward.runtime.self_check``) run exactly this.
"""

from __future__ import annotations

from qward.runtime import sandbox
from qward.runtime.namespaces import apply_capability_drop, apply_namespaces

__all__ = ["enter", "lock"]


def enter(
    report: sandbox.IsolationReport,
    *,
    hide: tuple[str, ...],
    read_paths: list[str],
    memory_limit: int,
    probe_socket: str | None = None,
) -> None:
    """Apply the layers that go on before the model is loaded, probing as they go."""
    apply_namespaces(report, hide=hide, keep=tuple(read_paths))
    apply_capability_drop(report)
    sandbox.apply_no_new_privs(report)
    sandbox.apply_landlock(report, read_only=read_paths)
    sandbox.apply_rlimits(report, memory_limit=memory_limit)
    sandbox.probe(report, stage="namespaces", unix_socket=probe_socket)
    sandbox.apply_seccomp_denylist(report)
    sandbox.probe(report, stage="pre-seccomp")


def lock(report: sandbox.IsolationReport) -> None:
    """Install the seccomp allowlist (after warm-up) and probe the finished sandbox."""
    sandbox.apply_seccomp(report)
    sandbox.probe(report, stage="final")
