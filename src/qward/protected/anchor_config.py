"""``anchors.json``: where and how often the core anchors its signed checkpoints.

Lives in the core's state directory next to ``witnesses.json``::

    {"ledger": "ethereum", "rpc_url": "http://127.0.0.1:8545", "chain_id": 31337,
     "private_key_file": "anchor.key", "every_checkpoints": 10, "interval_seconds": 3600,
     "confirmations": 12}

``every_checkpoints`` and ``interval_seconds`` may be given alone or together (whichever comes
first makes an anchor due). The account's private key is referenced by path (relative to the
state directory), never written into the config: the file must be mode 0600 or stricter and hold
one 32-byte key in hex. The key's bytes never appear in an error, a log line or a log entry; an
error names the field and the file, not the content.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qward.errors import FormatError

__all__ = ["ANCHORS_FILE", "AnchorConfig", "load_anchor_config"]

ANCHORS_FILE = "anchors.json"
_MAX_CONFIG = 64 * 1024
_KEYS = frozenset(
    {
        "ledger",
        "rpc_url",
        "chain_id",
        "private_key_file",
        "every_checkpoints",
        "interval_seconds",
        "confirmations",
    }
)
_KEY_HEX = re.compile(r"(0x)?[0-9a-fA-F]{64}")
_LEDGERS = ("ethereum",)


@dataclass(frozen=True, kw_only=True)
class AnchorConfig:
    """A validated ``anchors.json``. ``private_key`` is redacted from ``repr``."""

    ledger: str
    rpc_url: str
    chain_id: int
    private_key: bytes = field(repr=False)
    private_key_file: Path
    every_checkpoints: int | None
    interval_seconds: float | None
    confirmations: int

    def __getstate__(self) -> Any:
        raise TypeError("an anchor config holds a private key and is never serialised")


def _field_error(name: str, why: str) -> FormatError:
    return FormatError(f"{ANCHORS_FILE}: field '{name}' {why}")


def _positive_int(doc: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = doc.get(name)
    if value is None and not required:
        return None
    if type(value) is not int or value < 1:
        raise _field_error(name, "must be a positive integer")
    return value


def _interval(doc: dict[str, Any]) -> float | None:
    value = doc.get("interval_seconds")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise _field_error("interval_seconds", "must be a positive number of seconds")
    return float(value)


def _rpc_url(doc: dict[str, Any]) -> str:
    value = doc.get("rpc_url")
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise _field_error("rpc_url", "must be an http:// or https:// URL")
    return value


def _read_key(state_dir: Path, doc: dict[str, Any]) -> tuple[Path, bytes]:
    value = doc.get("private_key_file")
    if not isinstance(value, str) or not value:
        raise _field_error("private_key_file", "must be the path of the account's key file")
    path = state_dir / value
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise _field_error("private_key_file", f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode) or mode & 0o077:
            raise _field_error(
                "private_key_file", f"{path} must be a regular file of mode 0600 or stricter"
            )
        raw = handle.read(256)
    text = raw.decode("ascii", "replace").strip()
    if not _KEY_HEX.fullmatch(text):
        # Never echo the content: it is (or is close to) a private key.
        raise _field_error("private_key_file", f"{path} must hold one 32-byte key in hex")
    return path, bytes.fromhex(text.removeprefix("0x"))


def load_anchor_config(state_dir: Path, data: bytes) -> AnchorConfig:
    """Parse and check ``anchors.json`` (``data``); ``FormatError`` names the field at fault."""
    if len(data) > _MAX_CONFIG:
        raise FormatError(f"{ANCHORS_FILE} is over {_MAX_CONFIG} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{ANCHORS_FILE} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{ANCHORS_FILE}: expected a JSON object")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise _field_error(unknown[0], f"is not known (expected some of {sorted(_KEYS)})")
    if doc.get("ledger") not in _LEDGERS:
        raise _field_error("ledger", f"must be one of {list(_LEDGERS)}")
    chain_id = _positive_int(doc, "chain_id", required=True)
    every = _positive_int(doc, "every_checkpoints", required=False)
    interval = _interval(doc)
    if every is None and interval is None:
        raise _field_error("every_checkpoints", "or 'interval_seconds' (or both) must be given")
    confirmations = _positive_int(doc, "confirmations", required=True)
    rpc_url = _rpc_url(doc)
    key_path, key = _read_key(state_dir, doc)
    assert chain_id is not None and confirmations is not None  # required above
    return AnchorConfig(
        ledger=doc["ledger"],
        rpc_url=rpc_url,
        chain_id=chain_id,
        private_key=key,
        private_key_file=key_path,
        every_checkpoints=every,
        interval_seconds=interval,
        confirmations=confirmations,
    )
