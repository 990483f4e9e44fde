"""Who may call which core operation: the peer uid allow-list, checked with ``SO_PEERCRED``.

The one table of operation classes. ``data`` operations are what the public server needs to serve
requests; ``admin`` operations change keys or write administrative log entries. The workers' uid is
refused everything, whatever else is configured.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from qward.errors import QwardError

__all__ = ["OPERATION_CLASSES", "PeerPolicy", "PermissionDeniedError"]

OPERATION_CLASSES: dict[str, str] = {
    "trust": "data",
    "attest": "data",
    "run": "data",
    "generate": "data",
    "replay_generation": "data",
    "replay": "data",
    "register_model": "data",
    "unload_model": "data",
    "models": "data",
    "checkpoint": "data",
    "tile": "data",
    "inclusion_proof": "data",
    "consistency_proof": "data",
    "record_access": "data",
    "record_admin": "admin",
    "keys_list": "admin",
    "keys_report": "admin",
    "keys_rotate": "admin",
    "keys_retire": "admin",
    "keys_rewrap": "admin",
    "keys_rewrap_model": "admin",
    "erase_subject": "admin",
    "reveal_fields": "admin",
}


class PermissionDeniedError(QwardError):
    """The connecting process's uid may not call this core operation."""

    code = "forbidden"


@dataclass(frozen=True, kw_only=True)
class PeerPolicy:
    """Peer uids allowed per operation class; admins may also call every data operation."""

    admin_uids: frozenset[int]
    api_uids: frozenset[int] = frozenset()
    denied_uids: frozenset[int] = frozenset()

    @classmethod
    def from_uids(
        cls,
        *,
        admin: Iterable[int] = (),
        api: Iterable[int] = (),
        denied: Iterable[int] = (),
    ) -> PeerPolicy:
        """The policy for these uids; with no admin uid, root and the core's own uid are admins."""
        admins = frozenset(admin) or frozenset({0, os.getuid()})
        return cls(admin_uids=admins, api_uids=frozenset(api), denied_uids=frozenset(denied))

    def check(self, op: str, uid: int) -> None:
        """Return if ``uid`` may call ``op``; raise ``PermissionDeniedError`` otherwise.

        An operation missing from the table counts as admin: a new operation is closed until
        someone classifies it.
        """
        kind = OPERATION_CLASSES.get(op, "admin")
        if uid in self.denied_uids:
            raise PermissionDeniedError(f"permission denied for uid {uid}")
        if uid in self.admin_uids:
            return
        if kind == "data" and uid in self.api_uids:
            return
        raise PermissionDeniedError(f"permission denied for uid {uid}")
