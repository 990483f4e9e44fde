"""``python -m qward.runtime.self_check``: put on the worker's sandbox with no model, report it.

``qward doctor`` runs this in a fresh process so that what it prints is what this kernel and
this account actually allow (the same ``qward.runtime.isolation`` steps and probes a worker
runs), not what the configuration hopes for. The report goes to stdout as JSON.
"""

from __future__ import annotations

import json
import sys

from qward.runtime import isolation, sandbox
from qward.runtime.worker import read_paths

__all__ = ["main"]

_MEMORY_LIMIT = 2 * 1024 * 1024 * 1024


def main() -> int:
    """Apply every layer, probe, and print the isolation report."""
    report = sandbox.IsolationReport()
    isolation.enter(report, hide=(), read_paths=read_paths(), memory_limit=_MEMORY_LIMIT)
    isolation.lock(report)
    # Written before exit: the allowlist permits write(2) on stdout.
    sys.stdout.write(json.dumps(report.to_json()) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
