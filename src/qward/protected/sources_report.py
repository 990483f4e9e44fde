"""``python -m qward.protected.sources_report``: the evidence sources the core would use, as JSON.

``qward doctor`` runs this as a child process: the CLI is public code and never imports the
core's modules, and the answer must come from the same code that collects the core's evidence.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from qward.protected.attesters import available_sources

__all__ = ["main"]


def main() -> int:
    """Print one JSON list of ``SourceStatus`` objects on stdout."""
    sys.stdout.write(json.dumps([dataclasses.asdict(s) for s in available_sources()]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
