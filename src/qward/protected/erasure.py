"""The core's erasure operations: crypto-shred a data subject, and open sealed fields for admins.

Erasure is logged before the key is deleted ("no audit record, no action"): if the log refuses
the entry, nothing is deleted. A failure after the entry is logged leaves the key in place and
the error says so; asking again finishes the job (the second entry records the retry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qward.errors import InputError, NotFoundError
from qward.protected.personal import PersonalData
from qward.receipts.entries import erasure_entry

__all__ = ["erase_subject", "reveal_fields"]

Reply = tuple[dict[str, Any], bytes]
_MAX_FIELDS = 10_000


def _require(personal: PersonalData | None) -> PersonalData:
    if personal is None:
        raise InputError(
            "this core declares no personal fields (no personal-data.json), so nothing is erasable"
        )
    return personal


def erase_subject(
    personal: PersonalData | None,
    header: dict[str, Any],
    *,
    log: Callable[[bytes], int],
    now: str,
) -> Reply:
    """Delete ``header["subject"]``'s key after logging a ``qward/erasure/v1`` entry."""
    keys = _require(personal).keys
    subject = header.get("subject")
    if not isinstance(subject, str) or not subject:
        raise InputError("erase needs the subject's identifier")
    key_id = keys.key_id(subject)
    if keys.get(key_id) is None:
        raise NotFoundError("no key is held for that subject (never seen, or already erased)")
    index = log(erasure_entry(subject_key_id=key_id, at=now))
    keys.erase(subject)
    return {"ok": True, "subject_key_id": key_id, "log_index": index}, b""


def reveal_fields(personal: PersonalData | None, header: dict[str, Any]) -> Reply:
    """Each ``{"value": sealed, "context": where}`` opened: its plaintext, or "[erased]"."""
    opener = _require(personal)
    fields = header.get("fields")
    if not isinstance(fields, list) or len(fields) > _MAX_FIELDS:
        raise InputError(f"fields must be a list of at most {_MAX_FIELDS} sealed fields")
    values = []
    for field in fields:
        if not isinstance(field, dict) or not isinstance(field.get("context"), str):
            raise InputError("each field needs a value and its context")
        values.append(opener.reveal(field.get("value"), field["context"]))
    return {"ok": True, "values": values}, b""
