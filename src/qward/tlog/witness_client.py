"""The log's side of c2sp.org/tlog-witness: collect cosignatures on a new checkpoint.

For each witness the client remembers the size it last had cosigned there. It sends that size,
the consistency proof from it, and the checkpoint; on ``409 Conflict`` with a ``text/x.tlog.size``
body it learns the witness's size and retries once with the matching proof. Only cosignature
lines that verify under that witness's configured keys are kept, so a witness cannot add text to
the note. Witnesses are asked in parallel; one failing witness costs only its own cosignature.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from qward.errors import FormatError, QwardError, VerificationError
from qward.tlog.backend import note_checkpoint
from qward.tlog.note import NoteVerifier, add_signature_lines, note_signatures
from qward.tlog.witness import SIZE_CONTENT_TYPE, add_checkpoint_body
from qward.tlog.witness_policy import Quorum

__all__ = ["WitnessClient", "WitnessEndpoint", "load_witness_config"]

ProofSource = Callable[[int, int], tuple[bytes, ...]]
_MAX_RESPONSE = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class WitnessEndpoint:
    """A witness: its submission URL prefix and the cosignature keys it signs with."""

    url: str
    keys: tuple[NoteVerifier, ...]


def _verified_lines(note: bytes, lines: bytes, keys: Sequence[NoteVerifier]) -> bytes:
    """``lines`` if every one is a valid cosignature by one of ``keys``; else raise."""
    text, ours = note_signatures(note)
    _, combined = note_signatures(note + lines)
    known = {(k.name, k.key_id): k for k in keys}
    for name, key_id, signature in combined[len(ours) :]:
        key = known.get((name, key_id))
        if key is None:
            raise VerificationError(f"witness answered with a signature by unknown key {name!r}")
        key.verify(text, signature)
    return lines


def load_witness_config(data: bytes) -> tuple[tuple[WitnessEndpoint, ...], Quorum]:
    """Parse ``{"quorum": k, "witnesses": [{"url": ..., "keys": [vkey, ...]}, ...]}``.

    Returns the endpoints to ask and the quorum policy clients should pin.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"witness config is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("witnesses"), list):
        raise FormatError("witness config: expected an object with a 'witnesses' list")
    endpoints = []
    for item in doc["witnesses"]:
        url, keys = item.get("url") if isinstance(item, dict) else None, None
        if isinstance(item, dict):
            keys = item.get("keys")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise FormatError("witness config: every witness needs an http(s) 'url'")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise FormatError(f"witness config: witness {url} needs a list of 'keys'")
        verifiers = tuple(NoteVerifier.from_vkey(k) for k in keys)
        endpoints.append(WitnessEndpoint(url=url, keys=verifiers))
    quorum = doc.get("quorum", len(endpoints))
    if type(quorum) is not int:
        raise FormatError("witness config: 'quorum' must be an integer")
    policy = Quorum(threshold=quorum, witnesses=tuple(k for e in endpoints for k in e.keys))
    return tuple(endpoints), policy


class WitnessClient:
    """Asks every configured witness to cosign each new checkpoint."""

    def __init__(
        self,
        witnesses: Sequence[WitnessEndpoint],
        *,
        timeout: float = 5.0,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self._witnesses = tuple(witnesses)
        self._http = httpx.Client(timeout=timeout)
        self._known: dict[str, int] = {}
        self._lock = threading.Lock()
        self._on_error = on_error
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self._witnesses)))

    def cosign(self, note: bytes, proofs: ProofSource) -> bytes:
        """``note`` with every cosignature the witnesses gave; failures are reported, skipped."""
        size = note_checkpoint(note).size
        results = self._pool.map(lambda w: self._ask(w, note, size, proofs), self._witnesses)
        for lines in results:
            if lines:
                note = add_signature_lines(note, lines)
        return note

    def _ask(self, witness: WitnessEndpoint, note: bytes, size: int, proofs: ProofSource) -> bytes:
        try:
            with self._lock:
                old = min(self._known.get(witness.url, 0), size)
            lines = self._post(witness, note, old, size, proofs)
            with self._lock:
                self._known[witness.url] = size
            return lines
        except (QwardError, httpx.HTTPError, ValueError) as exc:
            if self._on_error is not None:
                self._on_error(witness.url, f"{type(exc).__name__}: {exc}")
            return b""

    def _post(
        self, witness: WitnessEndpoint, note: bytes, old: int, size: int, proofs: ProofSource
    ) -> bytes:
        url = witness.url.rstrip("/") + "/add-checkpoint"
        for _ in range(2):
            body = add_checkpoint_body(old_size=old, proof=proofs(old, size), note=note)
            response = self._http.post(url, content=body)
            if response.status_code == 409 and response.headers.get("content-type", "").startswith(
                SIZE_CONTENT_TYPE
            ):
                witnessed = int(response.text.strip())
                if witnessed > size:
                    raise VerificationError(
                        f"witness {url} has cosigned size {witnessed}, beyond this log's {size}"
                    )
                old = witnessed
                continue
            if response.status_code != 200:
                raise VerificationError(
                    f"witness {url} refused with {response.status_code}: {response.text[:200]}"
                )
            if len(response.content) > _MAX_RESPONSE:
                raise VerificationError(f"witness {url} sent an oversized response")
            return _verified_lines(note, response.content, witness.keys)
        raise VerificationError(f"witness {url} kept answering 409")

    def close(self) -> None:
        """Close connections and the worker threads."""
        self._pool.shutdown(wait=True)
        self._http.close()

    def __enter__(self) -> WitnessClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
