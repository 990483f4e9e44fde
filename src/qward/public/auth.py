"""Bearer-token authentication and role-based authorisation for the public API.

Tokens are random 256-bit secrets shown once at creation; the token file keeps only their
SHA-256, so reading it does not let anyone act as a client. Roles:

- ``client``: inference and metadata on the models the token names (or ``*``);
- ``auditor``: the trust bundle, the transparency log, its tiles and proofs;
- ``admin``: everything, including registering, loading and unloading models.

Every lookup compares digests with ``hmac.compare_digest`` against every stored token, so the time
taken does not depend on which token (if any) matched. Tokens expire (90 days unless created with
another lifetime or none) and can be revoked; a running server re-reads the file when it changes,
so new, revoked and expired tokens take effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qward.encoding import canonical_json, parse_canonical_json, read_limited
from qward.errors import FormatError, InputError, NotFoundError, QwardError

__all__ = ["DEFAULT_LIFETIME", "ROLES", "TOKEN_FILE", "Principal", "TokenStore"]

ROLES = ("client", "auditor", "admin")
TOKEN_FILE = "tokens.json"  # noqa: S105 - a file name; the file holds only token digests
_PREFIX = "qwt_"
_MAX_FILE = 4 * 1024 * 1024
#: Seconds a token is valid unless created with another lifetime (or none).
DEFAULT_LIFETIME = 90 * 24 * 3600
# How often a running server looks at the token file for changes.
_RELOAD_EVERY = 1.0


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who is calling: a token id (never the token), a role and the models it may use."""

    token_id: str
    role: str
    models: tuple[str, ...]
    created_at: int = 0
    expires_at: int | None = None
    revoked_at: int | None = None

    def may_use(self, model: str) -> bool:
        """Whether this principal may run or inspect ``model``."""
        return self.role == "admin" or "*" in self.models or model in self.models

    def valid_at(self, now: float) -> bool:
        """Whether the token is neither revoked nor expired at ``now`` (seconds since epoch)."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _optional_int(item: dict[str, Any], key: str) -> int | None:
    value = item.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise FormatError(f"token file: {key} must be an integer or null")
    return value


def _parse(doc: dict[str, Any]) -> list[tuple[bytes, Principal]]:
    entries = doc.get("tokens")
    if not isinstance(entries, list):
        raise FormatError("token file: expected a tokens list")
    parsed = []
    for item in entries:
        try:
            principal = Principal(
                token_id=str(item["id"]),
                role=str(item["role"]),
                models=tuple(str(m) for m in item["models"]),
                created_at=_optional_int(item, "created_at") or 0,
                expires_at=_optional_int(item, "expires_at"),
                revoked_at=_optional_int(item, "revoked_at"),
            )
            parsed.append((bytes.fromhex(str(item["sha256"])), principal))
        except (KeyError, TypeError, ValueError):
            raise FormatError("token file: a token entry is malformed") from None
    return parsed


class TokenStore:
    """Tokens kept as digests in ``<state_dir>/tokens.json`` (mode 0600, or as the operator
    set it: a save keeps the file's owner and mode)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: list[tuple[bytes, Principal]] = []
        self._seen: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._load()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> None:
        seen = self._signature()
        entries: list[tuple[bytes, Principal]] = []
        if seen is not None:
            doc = parse_canonical_json(
                read_limited(str(self._path), limit=_MAX_FILE, what="tokens"), what="token file"
            )
            entries = _parse(doc)
        self._entries, self._seen = entries, seen

    def _refresh(self, *, force: bool = False) -> None:
        """Re-read the file if it changed (looked at once a second, or now if ``force``)."""
        now = time.monotonic()
        if not force and now - self._checked < _RELOAD_EVERY:
            return
        self._checked = now
        seen = self._signature()
        if seen != self._seen:
            try:
                self._load()
            except QwardError:
                # A token file that does not parse authenticates nobody (fail closed).
                self._entries, self._seen = [], seen

    def create(
        self,
        *,
        role: str,
        models: tuple[str, ...],
        lifetime: int | None = DEFAULT_LIFETIME,
    ) -> tuple[str, Principal]:
        """Create a token; returns the secret (shown once) and its principal. ``models`` empty
        means every model; ``lifetime`` None means it never expires."""
        if role not in ROLES:
            raise InputError(f"role must be one of {', '.join(ROLES)}")
        if lifetime is not None and lifetime <= 0:
            raise InputError("a token's lifetime must be positive")
        now = int(self._clock())
        token = _PREFIX + secrets.token_urlsafe(32)
        principal = Principal(
            token_id=secrets.token_hex(8),
            role=role,
            models=models or ("*",),
            created_at=now,
            expires_at=None if lifetime is None else now + lifetime,
        )
        with self._lock:
            self._load()
            self._entries.append((_digest(token), principal))
            self._save()
        return token, principal

    def revoke(self, token_id: str) -> Principal:
        """Revoke the token ``token_id``; it never authenticates again."""
        with self._lock:
            self._load()
            for i, (digest, principal) in enumerate(self._entries):
                if principal.token_id == token_id:
                    if principal.revoked_at is None:
                        principal = replace(principal, revoked_at=int(self._clock()))
                        self._entries[i] = (digest, principal)
                        self._save()
                    return principal
        raise NotFoundError(f"no token with id {token_id!r}")

    def principals(self) -> list[Principal]:
        """Every token's principal (never a token or its digest), in creation order."""
        with self._lock:
            self._load()
            return [p for _, p in self._entries]

    def _save(self) -> None:
        doc = {
            "tokens": [
                {
                    "id": p.token_id,
                    "role": p.role,
                    "models": list(p.models),
                    "sha256": digest.hex(),
                    "created_at": p.created_at,
                    "expires_at": p.expires_at,
                    "revoked_at": p.revoked_at,
                }
                for digest, p in self._entries
            ]
        }
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # A server running as another user reads this file (qward serve as root makes it
            # root:qward-api 0640): the replacement keeps the owner and mode it had.
            old = os.stat(self._path)
            os.fchmod(fd, stat.S_IMODE(old.st_mode) & 0o640)
            if os.geteuid() == 0:
                os.fchown(fd, old.st_uid, old.st_gid)
        except FileNotFoundError:
            pass
        with os.fdopen(fd, "wb") as handle:
            handle.write(canonical_json(doc))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._path)
        self._seen = self._signature()

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal holding ``token`` if it is valid now, or None; constant time over the
        stored tokens."""
        if not token:
            return None
        presented = _digest(token)
        found = self._match(presented, force=False)
        if found is None:
            # A token created a moment ago works at once: an unknown one looks at the file again.
            found = self._match(presented, force=True)
        if found is None or not found.valid_at(self._clock()):
            return None
        return found

    def _match(self, presented: bytes, *, force: bool) -> Principal | None:
        with self._lock:
            self._refresh(force=force)
            entries = self._entries
        found = None
        for digest, principal in entries:
            if hmac.compare_digest(digest, presented):
                found = principal
        return found
