"""SDK for auditors: read the transparency log over HTTP and verify everything fetched.

``LogClient`` fetches the C2SP checkpoint and tiles from a qward server (``/log/...``), verifies the
checkpoint against the pinned log keys, and computes inclusion and consistency proofs itself from
tiles, so a dishonest server cannot answer with a proof it made up for the occasion.
"""

from __future__ import annotations

import httpx

from qward.errors import NotFoundError, QwardError, VerificationError
from qward.receipts.trust import TrustBundle
from qward.tlog.checkpoint import Checkpoint
from qward.tlog.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from qward.tlog.note import open_note_by_any_set
from qward.tlog.tile_reader import TileReader

__all__ = ["LogClient"]

_MAX_RESOURCE = 4 * 1024 * 1024


class LogClient:
    """Verifying reader of a qward transparency log."""

    def __init__(
        self,
        base_url: str,
        *,
        trust: TrustBundle,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/log/", timeout=timeout, headers=headers
        )
        self._trust = trust

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> LogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str) -> bytes:
        try:
            response = self._http.get(path)
        except httpx.HTTPError as exc:
            raise QwardError(f"fetching {path} failed: {type(exc).__name__}") from None
        if response.status_code == 404:
            raise NotFoundError(f"{path} is not served by the log")
        if response.status_code != 200 or len(response.content) > _MAX_RESOURCE:
            raise QwardError(f"fetching {path} failed with HTTP {response.status_code}")
        return response.content

    def checkpoint(self) -> Checkpoint:
        """The latest checkpoint, after checking every pinned log signature and the origin."""
        text, _ = open_note_by_any_set(self._get("checkpoint"), self._trust.log_key_sets)
        checkpoint = Checkpoint.from_body(text)
        if checkpoint.origin != self._trust.origin:
            raise VerificationError(f"checkpoint is for {checkpoint.origin!r}, not the pinned log")
        return checkpoint

    def _reader(self, checkpoint: Checkpoint) -> TileReader:
        return TileReader(size=checkpoint.size, fetch=self._get)

    def entry(self, index: int, checkpoint: Checkpoint) -> bytes:
        """Entry ``index``, checked against the tiles of ``checkpoint``'s tree."""
        if index >= checkpoint.size:
            raise NotFoundError(f"entry {index} is beyond the tree of {checkpoint.size}")
        reader = self._reader(checkpoint)
        entry = reader.entry(index)
        self.verify_inclusion(entry, index, checkpoint)
        return entry

    def verify_inclusion(self, entry: bytes, index: int, checkpoint: Checkpoint) -> None:
        """Prove from tiles that ``entry`` is at ``index`` in ``checkpoint``'s tree."""
        proof = inclusion_proof(index, checkpoint.size, self._reader(checkpoint).node)
        verify_inclusion(
            leaf_hash=leaf_hash(entry),
            index=index,
            size=checkpoint.size,
            proof=proof,
            root=checkpoint.root_hash,
        )

    def verify_consistency(self, old: Checkpoint, new: Checkpoint) -> None:
        """Prove from tiles that ``new``'s tree extends ``old``'s."""
        if old.size == 0 or old.size == new.size:
            proof: tuple[bytes, ...] = ()
        else:
            proof = consistency_proof(old.size, new.size, self._reader(new).node)
        verify_consistency(
            old_size=old.size,
            new_size=new.size,
            old_root=old.root_hash,
            new_root=new.root_hash,
            proof=proof,
        )
