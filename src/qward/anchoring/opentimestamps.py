"""Anchor checkpoints with OpenTimestamps: calendar servers now, Bitcoin a few hours later.

Anchoring builds a detached timestamp over the anchor digest, which is the SHA-256 of the file
``ANCHOR_LABEL || note``, so the ``.ots`` bytes are an ordinary OpenTimestamps proof for that file.
As the ``ots`` client does, it appends a 16-byte random nonce and hashes before submitting, so the
calendars never see the digest itself, then POSTs the result to each configured calendar's
``/digest`` and merges the timestamps they return. A fresh proof carries only pending
attestations: a calendar's promise to commit the digest to Bitcoin, which proves no time at all.
``upgrade`` later asks those calendars for the completed path to a Bitcoin block.

Verification, in order:

1. The proof is an ``opentimestamps`` proof for this note with one field, ``ots``.
2. The ``.ots`` bytes parse as a detached SHA-256 timestamp, re-serialise to exactly the same bytes,
   and are for this note's anchor digest.
3. Every commitment operation from the digest to each attestation is an append, a prepend or
   SHA-256 (no SHA-1 or RIPEMD-160), and each node's message is recomputed from its parent's.
4. A Bitcoin attestation must match the Merkle root of the block header at its height, fetched from
   ``bitcoin_headers`` (a node you trust); a mismatch rejects the proof. The earliest such block's
   time is the result. Without a header source, Bitcoin attestations are reported unverified and
   the result stays pending.
5. Otherwise pending attestations from calendars in the allow-list make a pending result; anything
   else, or nothing at all, is a ``ProofError``.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qward.anchoring.base import (
    AnchoredTime,
    AnchorProof,
    AnchorStatus,
    anchor_digest,
    check_proof_subject,
)
from qward.encoding import b64decode, b64encode
from qward.errors import AuditError, FormatError, InputError, ProofError, QwardError

try:
    from opentimestamps.calendar import (  # type: ignore[import-untyped]
        DEFAULT_AGGREGATORS,
        DEFAULT_CALENDAR_WHITELIST,
        CommitmentNotFoundError,
        RemoteCalendar,
        UrlWhitelist,
    )
    from opentimestamps.core.notary import (  # type: ignore[import-untyped]
        BitcoinBlockHeaderAttestation,
        PendingAttestation,
    )
    from opentimestamps.core.op import OpAppend, OpPrepend, OpSHA256  # type: ignore[import-untyped]
    from opentimestamps.core.serialize import (  # type: ignore[import-untyped]
        BytesDeserializationContext,
        BytesSerializationContext,
    )
    from opentimestamps.core.timestamp import (  # type: ignore[import-untyped]
        DetachedTimestampFile,
        Timestamp,
    )
except ImportError as exc:  # pragma: no cover - exercised by a test that hides opentimestamps
    raise ImportError(
        "qward.anchoring.opentimestamps needs python-opentimestamps; install the extra: "
        "pip install 'qward[anchoring]'"
    ) from exc

__all__ = ["MAX_OTS_BYTES", "OPENTIMESTAMPS_KIND", "BitcoinHeaders", "OpenTimestampsAnchor"]

OPENTIMESTAMPS_KIND = "opentimestamps"
#: A Bitcoin-attested proof is a few kB; this bounds the work a hostile proof can cause.
MAX_OTS_BYTES = 64 * 1024
#: A height -> the 80-byte serialised Bitcoin block header at that height on the best chain.
BitcoinHeaders = Callable[[int], bytes]

_NONCE_SIZE = 16
_HEADER_SIZE = 80
_ALLOWED_OPS = (OpAppend, OpPrepend, OpSHA256)
_FIELDS = frozenset({"ots"})


def _serialize(detached: Any) -> bytes:
    ctx = BytesSerializationContext()
    detached.serialize(ctx)
    return bytes(ctx.getbytes())


def _parse(raw: bytes, digest: bytes) -> Any:
    """Step 2: parse strictly, check canonical form and the digest; return the detached file."""
    if len(raw) > MAX_OTS_BYTES:
        raise FormatError("opentimestamps proof: .ots bytes are over the size limit")
    try:
        detached = DetachedTimestampFile.deserialize(BytesDeserializationContext(raw))
    except Exception as exc:  # the library raises many kinds (and RecursionError) on bad input
        raise FormatError(f"opentimestamps proof: .ots bytes do not parse ({exc})") from None
    if type(detached.file_hash_op) is not OpSHA256:
        raise ProofError("opentimestamps proof: the file hash is not SHA-256")
    if _serialize(detached) != raw:
        raise FormatError("opentimestamps proof: .ots bytes are not in canonical form")
    if not hmac.compare_digest(bytes(detached.file_digest), digest):
        raise ProofError("opentimestamps proof: the .ots timestamp is for a different digest")
    return detached


def _attested(root: Any) -> list[tuple[Any, Any]]:
    """Every (node, attestation) under ``root``, checking each operation on the way (step 3)."""
    found: list[tuple[Any, Any]] = []
    stack = [root]
    while stack:
        node = stack.pop()
        found.extend((node, attestation) for attestation in node.attestations)
        for op, child in node.ops.items():
            if type(op) not in _ALLOWED_OPS:
                raise ProofError(
                    f"opentimestamps proof: operation {type(op).__name__} is not allowed "
                    "(only append, prepend and SHA-256)"
                )
            if child.msg != op(node.msg):
                raise ProofError("opentimestamps proof: a commitment operation does not add up")
            stack.append(child)
    return found


def _header_fields(header: bytes) -> tuple[bytes, int]:
    """(Merkle root, time) from an 80-byte Bitcoin block header (version, prev, root, time...)."""
    if not isinstance(header, bytes) or len(header) != _HEADER_SIZE:
        raise ProofError("opentimestamps proof: the header source did not return 80 bytes")
    (time,) = struct.unpack_from("<I", header, 68)
    return header[36:68], int(time)


def _bitcoin_time(headers: BitcoinHeaders, msg: bytes, height: int) -> int:
    """Step 4: the block time, if ``msg`` is the Merkle root of the header at ``height``."""
    try:
        header = headers(height)
    except QwardError:
        raise
    except Exception as exc:  # the caller's node client: whatever it raises, fail closed
        raise ProofError(f"opentimestamps proof: no header for block {height}: {exc}") from None
    root, time = _header_fields(header)
    if not hmac.compare_digest(root, msg):
        raise ProofError(
            f"opentimestamps proof: the Bitcoin attestation does not match block {height}"
        )
    return time


class OpenTimestampsAnchor:
    """Anchors with OpenTimestamps calendars; verifies pending and Bitcoin-attested proofs.

    ``calendars`` are the URLs submitted to (by default the public aggregators the ``ots`` client
    uses); ``calendar_uris`` are the calendars whose pending attestations count and which
    ``upgrade`` may contact (by default the library's allow-list of public calendars; globs such
    as ``https://*.calendar.opentimestamps.org`` work). ``nonce`` supplies random bytes.
    """

    def __init__(
        self,
        *,
        calendars: Sequence[str] = DEFAULT_AGGREGATORS,
        calendar_uris: Sequence[str] | None = None,
        min_calendars: int | None = None,
        bitcoin_headers: BitcoinHeaders | None = None,
        timeout: float = 10.0,
        nonce: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if isinstance(calendars, str) or not calendars:
            raise InputError("opentimestamps anchor: give a list of at least one calendar URL")
        wanted = min(2, len(calendars)) if min_calendars is None else min_calendars
        if not 1 <= wanted <= len(calendars):
            raise InputError("opentimestamps anchor: min_calendars must be 1..len(calendars)")
        try:
            self._allowed = UrlWhitelist(calendar_uris) if calendar_uris is not None else None
        except (TypeError, AssertionError):
            raise InputError("opentimestamps anchor: calendar_uris must be plain URLs") from None
        self._calendars = tuple(calendars)
        self._min_calendars = wanted
        self._headers = bitcoin_headers
        self._timeout = timeout
        self._nonce = nonce

    @property
    def name(self) -> str:
        """The proof kind, ``"opentimestamps"``."""
        return OPENTIMESTAMPS_KIND

    def _trusted(self, uri: str) -> bool:
        if self._allowed is not None:
            return uri in self._allowed
        return bool(uri in DEFAULT_CALENDAR_WHITELIST)

    def anchor(self, note: bytes) -> AnchorProof:
        """Submit a nonced digest to the calendars; return a (pending) proof over the note."""
        digest = anchor_digest(note)
        stamp = Timestamp(digest)
        nonce = self._nonce(_NONCE_SIZE)
        tip = stamp.ops.add(OpAppend(nonce)).ops.add(OpSHA256())
        with ThreadPoolExecutor(max_workers=len(self._calendars)) as pool:
            results = list(pool.map(lambda url: self._submit(url, tip.msg), self._calendars))
        answers = [r for r in results if not isinstance(r, str)]
        if len(answers) < self._min_calendars:
            failures = "; ".join(r for r in results if isinstance(r, str))
            raise AuditError(
                f"opentimestamps anchor: {len(answers)} of {len(self._calendars)} calendars "
                f"answered, {self._min_calendars} needed: {failures}"
            )
        for answer in answers:
            tip.merge(answer)
        raw = _serialize(DetachedTimestampFile(OpSHA256(), stamp))
        proof = AnchorProof(kind=OPENTIMESTAMPS_KIND, digest=digest, data={"ots": b64encode(raw)})
        try:
            self.verify(note, proof)  # never hand out a proof this anchor would refuse
        except QwardError as exc:
            raise AuditError(
                f"opentimestamps anchor: the calendars' answers do not verify here: {exc}"
            ) from None
        return proof

    def _submit(self, url: str, commitment: bytes) -> Any:
        """The calendar's timestamp for ``commitment``, or a string saying why there is none."""
        try:
            return RemoteCalendar(url, user_agent="qward").submit(commitment, timeout=self._timeout)
        except Exception as exc:  # urllib, the calendar and the parser all raise their own kinds
            return f"{url}: {exc}"

    def _check(self, proof: AnchorProof) -> list[tuple[Any, Any]]:
        proof.expect_keys(_FIELDS)
        raw = b64decode(proof.text("ots"), what="anchor proof: data.ots")
        return _attested(_parse(raw, proof.digest).timestamp)

    def verify(self, note: bytes, proof: AnchorProof) -> AnchoredTime:
        """Check the commitment path to every attestation; report Bitcoin-attested or pending."""
        digest = check_proof_subject(note, proof, kind=OPENTIMESTAMPS_KIND)
        bitcoin: list[tuple[int, int]] = []
        unverified: list[int] = []
        pending: list[str] = []
        for node, attestation in self._check(proof):
            if isinstance(attestation, BitcoinBlockHeaderAttestation):
                height = int(attestation.height)
                if self._headers is None:
                    unverified.append(height)
                else:
                    bitcoin.append((_bitcoin_time(self._headers, node.msg, height), height))
            elif isinstance(attestation, PendingAttestation) and self._trusted(attestation.uri):
                pending.append(str(attestation.uri))
        return self._result(digest, bitcoin, unverified, pending)

    @staticmethod
    def _result(
        digest: bytes, bitcoin: list[tuple[int, int]], unverified: list[int], pending: list[str]
    ) -> AnchoredTime:
        if bitcoin:
            time, height = min(bitcoin)
            return AnchoredTime(
                kind=OPENTIMESTAMPS_KIND,
                digest=digest,
                status=AnchorStatus.CONFIRMED,
                time=time,
                evidence=f"bitcoin block {height} (header from the configured source)",
            )
        if not (pending or unverified):
            raise ProofError("opentimestamps proof: no attestation this verifier accepts")
        notes = [f"bitcoin block {h} not checked: no header source" for h in sorted(unverified)]
        notes += [f"pending at {uri}" for uri in sorted(set(pending))]
        return AnchoredTime(
            kind=OPENTIMESTAMPS_KIND,
            digest=digest,
            status=AnchorStatus.PENDING,
            time=None,
            evidence="; ".join(notes),
        )

    def upgrade(self, note: bytes, proof: AnchorProof) -> AnchorProof:
        """Ask each trusted calendar of a pending attestation for its completed timestamp.

        Returns the proof with whatever the calendars had merged in (unchanged while they are
        still pending); verify the result to see what it now proves.
        """
        check_proof_subject(note, proof, kind=OPENTIMESTAMPS_KIND)
        proof.expect_keys(_FIELDS)
        detached = _parse(b64decode(proof.text("ots"), what="anchor proof: data.ots"), proof.digest)
        asked, failures = 0, []
        for node, attestation in _attested(detached.timestamp):
            if not (isinstance(attestation, PendingAttestation) and self._trusted(attestation.uri)):
                continue
            asked += 1
            calendar = RemoteCalendar(attestation.uri, user_agent="qward")
            try:
                node.merge(calendar.get_timestamp(node.msg, timeout=self._timeout))
            except CommitmentNotFoundError:
                continue  # still pending: the calendar has not reached Bitcoin yet
            except Exception as exc:  # urllib, the calendar and the parser: one failure each
                failures.append(f"{attestation.uri}: {exc}")
        if failures and len(failures) == asked:
            raise AuditError(
                f"opentimestamps upgrade: every calendar failed: {'; '.join(failures)}"
            )
        upgraded = AnchorProof(
            kind=OPENTIMESTAMPS_KIND,
            digest=proof.digest,
            data={"ots": b64encode(_serialize(detached))},
        )
        self._check(upgraded)
        return upgraded
