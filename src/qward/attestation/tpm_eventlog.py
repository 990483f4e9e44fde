"""Replaying a TCG crypto-agile event log to the PCR values it claims (the SHA-256 bank).

The log format is the TCG "PC Client Platform Firmware Profile" §10: one ``TCG_PCClientPCREvent``
header in SHA-1 form whose data is the ``Spec ID Event03`` (it lists each bank's digest size),
then ``TCG_PCR_EVENT2`` records, all little-endian. Replay starts every PCR at zero (PCR0 at the
``StartupLocality`` event's locality, §10.4.5.3) and extends each event's SHA-256 digest;
``EV_NO_ACTION`` events are not extended (§10.4.1). A log proves nothing by itself: only after a
quote's PCR digest has verified does a matching replay tell which events made those PCRs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from qward.errors import AttestationError, FormatError

__all__ = ["EV_NO_ACTION", "MAX_EVENT_LOG_BYTES", "check_event_log", "replay_sha256"]

EV_NO_ACTION = 0x00000003
MAX_EVENT_LOG_BYTES = 1 << 20
_SPEC_ID = b"Spec ID Event03\x00"
_STARTUP_LOCALITY = b"StartupLocality\x00"
_SHA256 = 0x000B
_MAX_PCR = 23


class _LittleEndian:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise FormatError(f"event log: truncated at byte {self.at}")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")


def _digest_sizes(spec_id: bytes) -> dict[int, int]:
    """Bank digest sizes from the ``TCG_EfiSpecIDEvent`` (needed to walk each record)."""
    if not spec_id.startswith(_SPEC_ID):
        raise FormatError("event log: the first event is not a crypto-agile Spec ID Event03")
    cursor = _LittleEndian(spec_id)
    cursor.take(len(_SPEC_ID) + 4 + 4)  # signature, platformClass, version, errata, uintnSize
    count = cursor.uint(4)
    if count > 16:
        raise FormatError(f"event log: {count} digest algorithms is implausible")
    return {cursor.uint(2): cursor.uint(2) for _ in range(count)}


def replay_sha256(log: bytes) -> dict[int, bytes]:
    """The SHA-256 PCR values ``log`` extends to, for each PCR it touches."""
    if len(log) > MAX_EVENT_LOG_BYTES:
        raise FormatError(f"event log is over the {MAX_EVENT_LOG_BYTES}-byte limit")
    cursor = _LittleEndian(log)
    cursor.take(4 + 4 + 20)  # pcrIndex, eventType, SHA-1 digest of the header event
    sizes = _digest_sizes(cursor.take(cursor.uint(4)))
    if _SHA256 not in sizes:
        raise FormatError("event log: no SHA-256 bank")
    pcrs: dict[int, bytes] = {}
    while cursor.at < len(log):
        index, event_type = cursor.uint(4), cursor.uint(4)
        digests = {}
        for _ in range(cursor.uint(4)):
            alg = cursor.uint(2)
            if alg not in sizes:
                raise FormatError(f"event log: digest algorithm {alg:#06x} is not declared")
            digests[alg] = cursor.take(sizes[alg])
        data = cursor.take(cursor.uint(4))
        if index > _MAX_PCR:
            raise FormatError(f"event log: PCR {index} is out of range")
        if event_type == EV_NO_ACTION:
            if index == 0 and data.startswith(_STARTUP_LOCALITY) and len(data) == 17:
                pcrs[0] = bytes(31) + data[16:17]
            continue
        if _SHA256 not in digests:
            raise FormatError("event log: an event has no SHA-256 digest")
        pcrs[index] = hashlib.sha256(pcrs.get(index, bytes(32)) + digests[_SHA256]).digest()
    return pcrs


def check_event_log(log: bytes, pcrs: Mapping[str, bytes]) -> dict[int, bytes]:
    """Replay ``log`` and require each PCR it touches to equal the quoted ``"sha256:N"`` value."""
    try:
        replayed = replay_sha256(log)
    except FormatError as exc:
        raise AttestationError(str(exc), check="tpm-event-log") from None
    for index, value in sorted(replayed.items()):
        quoted = pcrs.get(f"sha256:{index}")
        if quoted is None or not hmac.compare_digest(quoted, value):
            raise AttestationError(
                f"replaying the event log gives another PCR {index} than the quote",
                check="tpm-event-log",
            )
    return replayed
