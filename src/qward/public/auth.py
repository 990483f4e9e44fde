"""Bearer-token authentication and role-based authorisation for the public API.

Tokens are random 256-bit secrets shown once at creation; the token file keeps only their
SHA-256, so reading it does not let anyone act as a client. Roles:

- ``client``: inference and metadata on the models the token names (or ``*``);
- ``auditor``: the trust bundle, the transparency log, its tiles and proofs;
- ``admin``: everything, including registering, loading and unloading models.

Every lookup compares digests with ``hmac.compare_digest`` against every stored token, so the time
taken does not depend on which token (if any) matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from qward.encoding import canonical_json, parse_canonical_json, read_limited
from qward.errors import FormatError, InputError

__all__ = ["ROLES", "TOKEN_FILE", "Principal", "TokenStore"]

ROLES = ("client", "auditor", "admin")
TOKEN_FILE = "tokens.json"  # noqa: S105 - a file name; the file holds only token digests
_PREFIX = "qwt_"
_MAX_FILE = 4 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who is calling: a token id (never the token), a role and the models it may use."""

    token_id: str
    role: str
    models: tuple[str, ...]

    def may_use(self, model: str) -> bool:
        """Whether this principal may run or inspect ``model``."""
        return self.role == "admin" or "*" in self.models or model in self.models


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenStore:
    """Tokens kept as digests in ``<state_dir>/tokens.json`` (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._entries: list[tuple[bytes, Principal]] = []
        if path.exists():
            self._load()

    def _load(self) -> None:
        doc = parse_canonical_json(
            read_limited(str(self._path), limit=_MAX_FILE, what="tokens"), what="token file"
        )
        entries = doc.get("tokens")
        if not isinstance(entries, list):
            raise FormatError("token file: expected a tokens list")
        for item in entries:
            principal = Principal(
                token_id=str(item["id"]),
                role=str(item["role"]),
                models=tuple(str(m) for m in item["models"]),
            )
            self._entries.append((bytes.fromhex(str(item["sha256"])), principal))

    def create(self, *, role: str, models: tuple[str, ...]) -> tuple[str, Principal]:
        """Create a token; returns the secret (shown once) and its principal."""
        if role not in ROLES:
            raise InputError(f"role must be one of {', '.join(ROLES)}")
        token = _PREFIX + secrets.token_urlsafe(32)
        principal = Principal(token_id=secrets.token_hex(8), role=role, models=models or ("*",))
        self._entries.append((_digest(token), principal))
        self._save()
        return token, principal

    def _save(self) -> None:
        doc = {
            "tokens": [
                {"id": p.token_id, "role": p.role, "models": list(p.models), "sha256": digest.hex()}
                for digest, p in self._entries
            ]
        }
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(canonical_json(doc))
        os.replace(tmp, self._path)

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal holding ``token``, or None; constant time over the stored tokens."""
        if not token:
            return None
        presented = _digest(token)
        found = None
        for digest, principal in self._entries:
            if hmac.compare_digest(digest, presented):
                found = principal
        return found
