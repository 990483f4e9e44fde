"""Start the background anchorer when the state directory holds ``anchors.json``."""

from __future__ import annotations

from pathlib import Path

from qward.encoding import read_limited
from qward.protected.anchor_config import ANCHORS_FILE, AnchorConfig, load_anchor_config
from qward.protected.anchor_ledger import EthereumLedger
from qward.protected.anchorer import Anchorer, Schedule
from qward.protected.auditor import Auditor
from qward.protected.service import CoreService

__all__ = ["read_anchoring", "start_anchoring"]


def read_anchoring(state_dir: Path) -> AnchorConfig | None:
    """``anchors.json``, checked (``FormatError`` naming the field), or ``None`` without one."""
    path = state_dir / ANCHORS_FILE
    if not path.exists():
        return None
    return load_anchor_config(
        state_dir, read_limited(str(path), limit=64 * 1024, what="anchor config")
    )


def start_anchoring(
    config: AnchorConfig | None, service: CoreService, auditor: Auditor
) -> Anchorer | None:
    """Start the anchorer for ``config`` (nothing without one); the core stops it first when
    it closes. No node is contacted here: a node that is down costs anchors, not the start."""
    if config is None:
        return None
    anchorer = Anchorer(
        ledger=EthereumLedger(config),
        schedule=Schedule(
            every_checkpoints=config.every_checkpoints,
            interval_seconds=config.interval_seconds,
            confirmations=config.confirmations,
        ),
        record=lambda entry: auditor.record([entry])[0],
    )
    auditor.add_listener(anchorer.notify)
    service.on_close(anchorer.stop)
    anchorer.start()
    return anchorer
