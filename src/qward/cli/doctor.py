"""``qward doctor``: which isolation layers and attestation devices this machine actually has.

The isolation part runs the worker's own sandbox steps in a fresh process
(``qward.runtime.self_check``) and reports what held, so it shows what this kernel and account
allow rather than what a configuration hopes for. The attestation part lists the evidence sources
the core looks for and which of them are present.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from rich.table import Table

from qward.cli._app import app, console, print_table
from qward.errors import RuntimeFailure
from qward.runtime.supervisor import worker_env

__all__: list[str] = []


def _child_json(module: str, env: dict[str, str] | None, what: str) -> Any:
    """Run ``python -m module`` (our own interpreter and module) and parse its JSON line."""
    done = subprocess.run(
        [sys.executable, "-m", module], capture_output=True, text=True, timeout=120, env=env
    )
    if done.returncode != 0 or not done.stdout.strip():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeFailure(f"the {what} failed (exit {done.returncode}): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@app.command("doctor")
def _doctor() -> None:
    """Show which isolation layers hold here and which attestation devices exist."""
    # The worker's own environment: single-threaded libraries, as a real worker has them
    # (a process with threads cannot enter a user namespace).
    report = _child_json("qward.runtime.self_check", worker_env(), "sandbox self-check")
    layers = Table(title="worker isolation (measured in a sandboxed child process)")
    for column in ("layer", "in force", "detail"):
        layers.add_column(column)
    for name, layer in report["layers"].items():
        layers.add_row(name, "yes" if layer["enforced"] else "NO", layer["detail"])
    print_table(layers)
    devices = Table(title="attestation evidence sources")
    for column in ("source", "path", "present", "usable", "detail"):
        devices.add_column(column)
    sources = _child_json("qward.protected.sources_report", None, "evidence source check")
    for source in sources:
        devices.add_row(
            source["name"],
            source["path"],
            "yes" if source["present"] else "no",
            "yes" if source["usable"] else "no",
            source["detail"],
        )
    print_table(devices)
    hardware = [s["name"] for s in sources if s["usable"]]
    console.print(
        f"attestation: {', '.join(hardware)}"
        if hardware
        else "attestation: software-only (no TEE or TPM here; receipts and trust bundles say so)"
    )
    degraded = report.get("degraded") or []
    console.print(
        f"isolation: {len(degraded)} layer(s) not in force: {', '.join(degraded)}"
        if degraded
        else "isolation: every layer in force"
    )
