"""C2SP signed notes (c2sp.org/signed-note@v1.0.0): signing, opening and verifier keys.

A signed note is UTF-8 text ending in a newline, a blank line, then one or more signature lines
``— <key name> base64(4-byte key ID || signature)``. Two signature types are supported:

* ``0x01``: Ed25519 over the note text (c2sp.org/signed-note, "Ed25519 signatures").
* ``0x04``: Ed25519 timestamped cosignatures (c2sp.org/tlog-cosignature, "Ed25519 signed
  message"): ``cosignature/v1``, a ``time`` line, then the whole checkpoint text. Witnesses sign
  with it (c2sp.org/tlog-witness).
* ``0x06``: ML-DSA-44 timestamped (sub)tree cosignatures (c2sp.org/tlog-cosignature, "ML-DSA-44
  signed message"), the type tlog-checkpoint says logs SHOULD use. It signs a binary
  ``cosigned_message`` built from the checkpoint's origin, size and root rather than the raw text,
  so it only applies to notes whose text is a checkpoint. Because that message does not cover
  checkpoint extension lines, we refuse to sign or accept 0x06 signatures on checkpoints that
  have any: otherwise unsigned lines would ride along with a verified note.

Key IDs are SHA-256(key name || 0x0A || signature type || public key)[:4] for both types, as the
two specifications require (an ML-DSA-44 verifier key whose key ID does not match that formula is
refused, though some published vectors use other IDs). Verification raises; it never returns a
bool. A note that carries the same key's signature twice is refused (the Go reference accepts
it): a duplicate line can only be an error or an attempt to make one key count twice.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from qward.encoding import b64decode, b64encode
from qward.errors import FormatError, InputError, SignatureError
from qward.tlog.checkpoint import Checkpoint

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "SIGNATURE_TYPE_ED25519",
    "SIGNATURE_TYPE_ED25519_COSIGNATURE",
    "SIGNATURE_TYPE_MLDSA44_COSIGNATURE",
    "Ed25519CosignatureSigner",
    "Ed25519NoteSigner",
    "MLDSA44NoteSigner",
    "NoteSigner",
    "NoteVerifier",
    "add_signature_lines",
    "cosignature_timestamp",
    "note_signatures",
    "open_note",
    "open_note_by_any_set",
    "sign_note",
    "signature_lines",
]

SIGNATURE_TYPE_ED25519 = 0x01
SIGNATURE_TYPE_ED25519_COSIGNATURE = 0x04
SIGNATURE_TYPE_MLDSA44_COSIGNATURE = 0x06
_COSIGNATURE_TYPES = (SIGNATURE_TYPE_ED25519_COSIGNATURE, SIGNATURE_TYPE_MLDSA44_COSIGNATURE)

#: The spec asks verifiers to accept at least 16 signatures, noting that post-quantum ones approach
#: 5 kB; these limits leave room for that many times four while bounding the work per note.
MAX_SIGNATURES = 64
MAX_NOTE_BYTES = 1024 * 1024

_PUBLIC_KEY_SIZES = {
    SIGNATURE_TYPE_ED25519: 32,
    SIGNATURE_TYPE_ED25519_COSIGNATURE: 32,
    SIGNATURE_TYPE_MLDSA44_COSIGNATURE: 1312,
}
_ED25519_SIGNATURE_SIZE = 64
_MLDSA44_SIGNATURE_SIZE = 2420
_MAX_TIMESTAMP = 2**63 - 1
_COSIGNATURE_LABEL = b"subtree/v1\n\x00"
_DASH = "\u2014 "
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX_KEY_ID = re.compile(r"[0-9a-f]{8}")


def _check_key_name(name: str) -> None:
    # c2sp.org/signed-note: "Key names MUST be non-empty and MUST NOT contain any Unicode spaces or
    # plus (U+002B) characters." Control characters are banned note-wide.
    if not name or "+" in name or any(ch.isspace() for ch in name) or _CONTROL.search(name):
        raise FormatError(f"note: key name {name!r} is empty or has a space, plus or control")


def _key_id(name: str, algorithm: int, public_key: bytes) -> bytes:
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([algorithm]) + public_key)
    return digest.digest()[:4]


def _cosigned_message(*, cosigner: str, timestamp: int, text: bytes) -> bytes:
    """The ML-DSA-44 ``cosigned_message`` of c2sp.org/tlog-cosignature for a checkpoint text."""
    checkpoint = Checkpoint.from_body(text)
    if checkpoint.extensions:
        raise FormatError("note: ML-DSA-44 cosignatures do not cover checkpoint extension lines")
    name, origin = cosigner.encode("utf-8"), checkpoint.origin.encode("utf-8")
    if not (len(name) <= 255 and len(origin) <= 255):
        raise FormatError("note: cosigner name and log origin must be at most 255 bytes")
    # A checkpoint is the subtree [0, size): start is zero, end is the tree size.
    return b"".join(
        [
            _COSIGNATURE_LABEL,
            bytes([len(name)]),
            name,
            timestamp.to_bytes(8, "big"),
            bytes([len(origin)]),
            origin,
            (0).to_bytes(8, "big"),
            checkpoint.size.to_bytes(8, "big"),
            checkpoint.root_hash,
        ]
    )


def _ed25519_cosigned_message(*, timestamp: int, text: bytes) -> bytes:
    """The Ed25519 cosignature/v1 signed message of c2sp.org/tlog-cosignature."""
    Checkpoint.from_body(text)  # only checkpoints are cosigned
    return b"cosignature/v1\ntime %d\n" % timestamp + text


def cosignature_timestamp(algorithm: int, signature: bytes) -> int:
    """The POSIX time a cosignature (type 0x04 or 0x06, key ID stripped) says it was made."""
    if algorithm not in _COSIGNATURE_TYPES or len(signature) < 8:
        raise FormatError(f"note: a type {algorithm:#04x} signature carries no timestamp")
    return int.from_bytes(signature[:8], "big")


@dataclass(frozen=True, kw_only=True)
class NoteVerifier:
    """A trusted note key: name, signature type and raw public key. ``key_id`` is derived."""

    name: str
    algorithm: int
    public_key_bytes: bytes

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        size = _PUBLIC_KEY_SIZES.get(self.algorithm) if type(self.algorithm) is int else None
        if size is None:
            raise FormatError(f"note: unsupported signature type {self.algorithm:#04x}")
        if len(self.public_key_bytes) != size:
            raise FormatError(f"note: public key for type {self.algorithm:#04x} is not {size} B")
        try:
            if self.algorithm in (SIGNATURE_TYPE_ED25519, SIGNATURE_TYPE_ED25519_COSIGNATURE):
                ed25519.Ed25519PublicKey.from_public_bytes(self.public_key_bytes)
            else:
                mldsa.MLDSA44PublicKey.from_public_bytes(self.public_key_bytes)
        except ValueError:
            raise FormatError(f"note: public key of {self.name!r} does not load") from None

    @property
    def key_id(self) -> bytes:
        """SHA-256(name || 0x0A || type || public key)[:4] (c2sp.org/signed-note)."""
        return _key_id(self.name, self.algorithm, self.public_key_bytes)

    @classmethod
    def for_ed25519(cls, name: str, public_key: ed25519.Ed25519PublicKey) -> NoteVerifier:
        """A verifier for Ed25519 note signatures (type 0x01)."""
        raw = public_key.public_bytes_raw()
        return cls(name=name, algorithm=SIGNATURE_TYPE_ED25519, public_key_bytes=raw)

    @classmethod
    def for_ed25519_cosignature(
        cls, name: str, public_key: ed25519.Ed25519PublicKey
    ) -> NoteVerifier:
        """A verifier for Ed25519 checkpoint cosignatures (type 0x04)."""
        raw = public_key.public_bytes_raw()
        return cls(name=name, algorithm=SIGNATURE_TYPE_ED25519_COSIGNATURE, public_key_bytes=raw)

    @property
    def is_cosigner(self) -> bool:
        """Whether this key makes timestamped checkpoint cosignatures (types 0x04 and 0x06)."""
        return self.algorithm in _COSIGNATURE_TYPES

    @classmethod
    def for_mldsa44(cls, name: str, public_key: mldsa.MLDSA44PublicKey) -> NoteVerifier:
        """A verifier for ML-DSA-44 checkpoint cosignatures (type 0x06)."""
        raw = public_key.public_bytes_raw()
        return cls(name=name, algorithm=SIGNATURE_TYPE_MLDSA44_COSIGNATURE, public_key_bytes=raw)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Verify ``signature`` (the bytes after the key ID) over note text ``message``."""
        try:
            if self.algorithm == SIGNATURE_TYPE_ED25519:
                self._verify_ed25519(message, signature)
            elif self.algorithm == SIGNATURE_TYPE_ED25519_COSIGNATURE:
                self._verify_ed25519_cosignature(message, signature)
            else:
                self._verify_mldsa44(message, signature)
        except (InvalidSignature, FormatError):
            raise SignatureError(
                f"note signature by {self.name!r} (key ID {self.key_id.hex()}) does not verify"
            ) from None

    def _verify_ed25519(self, message: bytes, signature: bytes) -> None:
        if len(signature) != _ED25519_SIGNATURE_SIZE:
            raise InvalidSignature
        key = ed25519.Ed25519PublicKey.from_public_bytes(self.public_key_bytes)
        key.verify(signature, message)

    def _verify_ed25519_cosignature(self, message: bytes, signature: bytes) -> None:
        # timestamped_signature = u64 timestamp || Ed25519 over the cosignature/v1 message.
        if len(signature) != 8 + _ED25519_SIGNATURE_SIZE:
            raise InvalidSignature
        timestamp = int.from_bytes(signature[:8], "big")
        if timestamp > _MAX_TIMESTAMP:
            raise InvalidSignature
        key = ed25519.Ed25519PublicKey.from_public_bytes(self.public_key_bytes)
        key.verify(signature[8:], _ed25519_cosigned_message(timestamp=timestamp, text=message))

    def _verify_mldsa44(self, message: bytes, signature: bytes) -> None:
        # c2sp.org/tlog-cosignature: timestamped_signature = u64 timestamp || signature, and the
        # signature covers the cosigned_message, which carries the same timestamp.
        if len(signature) != 8 + _MLDSA44_SIGNATURE_SIZE:
            raise InvalidSignature
        timestamp = int.from_bytes(signature[:8], "big")
        if timestamp > _MAX_TIMESTAMP:
            raise InvalidSignature
        signed = _cosigned_message(cosigner=self.name, timestamp=timestamp, text=message)
        key = mldsa.MLDSA44PublicKey.from_public_bytes(self.public_key_bytes)
        key.verify(signature[8:], signed)

    def to_vkey(self) -> str:
        """The verifier key string ``<name>+<hex key ID>+<base64(type || public key)>``."""
        encoded = b64encode(bytes([self.algorithm]) + self.public_key_bytes)
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse a verifier key string, rejecting a key ID that does not match the key."""
        # Key names and hex IDs contain no plus, but base64 does: split at the first two only.
        parts = vkey.split("+", 2)
        if len(parts) != 3 or not _HEX_KEY_ID.fullmatch(parts[1]):
            raise FormatError("verifier key: expected <name>+<8 hex digits>+<base64>")
        raw = b64decode(parts[2], what="verifier key")
        if not raw:
            raise FormatError("verifier key: no signature type or key material")
        verifier = cls(name=parts[0], algorithm=raw[0], public_key_bytes=raw[1:])
        if verifier.key_id.hex() != parts[1]:
            raise FormatError(f"verifier key: key ID {parts[1]} does not match the key")
        return verifier


class NoteSigner(Protocol):
    """Something that signs note text under one named key; the private key stays inside it."""

    @property
    def name(self) -> str: ...
    @property
    def key_id(self) -> bytes: ...
    @property
    def algorithm(self) -> int: ...
    def sign(self, message: bytes) -> bytes:
        """The signature over note text ``message``, without the key ID prefix."""
        ...

    def verifier(self) -> NoteVerifier:
        """The matching public verifier."""
        ...


class _UnexportableSigner:
    """Shared guard rails: no printing, pickling or copying of the wrapped private key."""

    __slots__ = ("_verifier",)

    _verifier: NoteVerifier

    @property
    def name(self) -> str:
        """The key name written in signature lines."""
        return self._verifier.name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID written before each signature."""
        return self._verifier.key_id

    @property
    def algorithm(self) -> int:
        """The signed-note signature type byte."""
        return self._verifier.algorithm

    def verifier(self) -> NoteVerifier:
        """The matching public verifier."""
        return self._verifier

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, key_id={self.key_id.hex()!r}, "
            "private_key=<redacted>)"
        )

    __str__ = __repr__

    def __getstate__(self) -> NoReturn:
        raise TypeError("note signers cannot be pickled")

    def __reduce__(self) -> NoReturn:
        raise TypeError("note signers cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("note signers cannot be copied")

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        raise TypeError("note signers cannot be copied")


class Ed25519NoteSigner(_UnexportableSigner):
    """Signs note text with Ed25519 (signature type 0x01)."""

    __slots__ = ("_key",)

    def __init__(self, *, name: str, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._key = private_key
        self._verifier = NoteVerifier.for_ed25519(name, private_key.public_key())

    def sign(self, message: bytes) -> bytes:
        """Ed25519 over the note text."""
        return self._key.sign(message)


class Ed25519CosignatureSigner(_UnexportableSigner):
    """Cosigns checkpoints with Ed25519 cosignature/v1 (type 0x04, c2sp.org/tlog-cosignature).

    ``clock`` returns the POSIX time to sign; a witness passes its real clock, since a v1
    cosignature states that, as of that time, this is the largest consistent tree it has seen.
    """

    __slots__ = ("_clock", "_key")

    def __init__(
        self, *, name: str, private_key: ed25519.Ed25519PrivateKey, clock: Callable[[], int]
    ) -> None:
        self._key = private_key
        self._clock = clock
        self._verifier = NoteVerifier.for_ed25519_cosignature(name, private_key.public_key())

    def sign(self, message: bytes) -> bytes:
        """u64 timestamp || Ed25519 over the cosignature/v1 message for checkpoint ``message``."""
        timestamp = self._clock()
        if not 0 <= timestamp <= _MAX_TIMESTAMP:
            raise InputError(f"cosignature timestamp {timestamp} is out of range")
        signed = _ed25519_cosigned_message(timestamp=timestamp, text=message)
        return timestamp.to_bytes(8, "big") + self._key.sign(signed)


class MLDSA44NoteSigner(_UnexportableSigner):
    """Signs checkpoints with ML-DSA-44 cosignatures (type 0x06, c2sp.org/tlog-cosignature).

    ``clock`` returns the POSIX time to put in the signature; without one the timestamp is zero,
    which the spec defines as making no claim that this is the largest tree seen at signing time.
    """

    __slots__ = ("_clock", "_key")

    def __init__(
        self,
        *,
        name: str,
        private_key: mldsa.MLDSA44PrivateKey,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._key = private_key
        self._clock = clock
        self._verifier = NoteVerifier.for_mldsa44(name, private_key.public_key())

    def sign(self, message: bytes) -> bytes:
        """u64 timestamp || ML-DSA-44 over the cosigned_message of checkpoint text ``message``."""
        timestamp = 0 if self._clock is None else self._clock()
        if not 0 <= timestamp <= _MAX_TIMESTAMP:
            raise InputError(f"cosignature timestamp {timestamp} is out of range")
        signed = _cosigned_message(cosigner=self.name, timestamp=timestamp, text=message)
        return timestamp.to_bytes(8, "big") + self._key.sign(signed)


def _check_text(text: str, what: str) -> None:
    if _CONTROL.search(text):
        raise FormatError(f"{what} contains a control character other than newline")


def signature_lines(text: bytes, signers: Sequence[NoteSigner]) -> bytes:
    """The signature lines every signer makes over note ``text`` (UTF-8, ending in a newline).

    A witness answers ``add-checkpoint`` with exactly these lines (c2sp.org/tlog-witness).
    """
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("note text is not valid UTF-8") from None
    if not decoded.endswith("\n"):
        raise FormatError("note text does not end with a newline")
    _check_text(decoded, "note text")
    if not signers:
        raise InputError("a signed note needs at least one signer")
    if len(signers) > MAX_SIGNATURES:
        raise InputError(f"a signed note carries at most {MAX_SIGNATURES} signatures")
    if len({(s.name, s.key_id) for s in signers}) != len(signers):
        raise InputError("two signers share a key name and key ID")
    lines = []
    for signer in signers:
        _check_key_name(signer.name)
        if len(signer.key_id) != 4:
            raise InputError(f"signer {signer.name!r} has a key ID that is not 4 bytes")
        encoded = b64encode(signer.key_id + signer.sign(text))
        lines.append(f"{_DASH}{signer.name} {encoded}\n".encode())
    return b"".join(lines)


def sign_note(text: bytes, signers: Sequence[NoteSigner]) -> bytes:
    """Sign note ``text`` (UTF-8, ending in a newline) with every signer, in order."""
    note = text + b"\n" + signature_lines(text, signers)
    if len(note) > MAX_NOTE_BYTES:
        raise FormatError("signed note is over the size limit")
    return note


def add_signature_lines(note: bytes, lines: bytes) -> bytes:
    """``note`` with more signature ``lines`` appended (checked: the result must parse)."""
    combined = note + lines
    _split_note(combined)
    return combined


def note_signatures(note: bytes) -> tuple[bytes, list[tuple[str, bytes, bytes]]]:
    """(text, [(key name, key ID, signature)]) of a note, parsed strictly but not verified."""
    return _split_note(note)


def _parse_signature_line(line: str) -> tuple[str, bytes, bytes]:
    """Split ``— <name> <base64>`` into (name, key ID, signature)."""
    if not line.startswith(_DASH):
        raise FormatError("note: signature line does not start with an em dash and a space")
    parts = line[len(_DASH) :].split(" ")
    if len(parts) != 2:
        raise FormatError("note: signature line is not '<name> <base64>'")
    _check_key_name(parts[0])
    raw = b64decode(parts[1], what="note signature")
    if len(raw) < 5:
        raise FormatError("note: signature is shorter than a key ID and one byte")
    return parts[0], raw[:4], raw[4:]


def _split_note(note: bytes) -> tuple[bytes, list[tuple[str, bytes, bytes]]]:
    """Enforce the c2sp.org/signed-note format and return (text, parsed signature lines).

    1. The note is at most ``MAX_NOTE_BYTES``, valid UTF-8, with no control characters but LF.
    2. The text ends at the last blank line; the text keeps its final newline.
    3. One to ``MAX_SIGNATURES`` signature lines follow, each newline-terminated.
    """
    if len(note) > MAX_NOTE_BYTES:
        raise FormatError("note is over the size limit")
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("note is not valid UTF-8") from None
    _check_text(decoded, "note")
    split = note.rfind(b"\n\n")
    if split < 0:
        raise FormatError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :].decode("utf-8")
    if not block.endswith("\n"):
        raise FormatError("note does not end with a newline-terminated signature line")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise FormatError(f"note has more than {MAX_SIGNATURES} signatures")
    return text, [_parse_signature_line(line) for line in lines]


def open_note(
    note: bytes,
    verifiers: Sequence[NoteVerifier],
    *,
    required: Sequence[NoteVerifier] | None = None,
) -> tuple[bytes, tuple[NoteVerifier, ...]]:
    """Verify ``note`` and return (text, the verifiers whose signatures verified).

    1. Parse the note strictly (``_split_note``).
    2. Ignore lines whose (name, key ID) matches no known key (c2sp.org/signed-note,
       "Signatures"); a known key's line must verify, or the whole note is rejected.
    3. Every ``required`` verifier (by default, every verifier; required keys count as known)
       must have signed, and at least one known key must have signed.
    """
    text, lines = _split_note(note)
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in (*verifiers, *(required or ())):
        if known.setdefault((v.name, v.key_id), v) != v:
            raise InputError(f"two different trusted keys share name {v.name!r} and key ID")
    verified: dict[tuple[str, bytes], NoteVerifier] = {}
    for name, key_id, signature in lines:
        verifier = known.get((name, key_id))
        if verifier is None:
            continue
        if (name, key_id) in verified:
            raise FormatError(f"note has two signatures by {name!r} (key ID {key_id.hex()})")
        verifier.verify(text, signature)
        verified[(name, key_id)] = verifier
    for verifier in verifiers if required is None else required:
        if (verifier.name, verifier.key_id) not in verified:
            raise SignatureError(
                f"note is not signed by required key {verifier.name!r} "
                f"(key ID {verifier.key_id.hex()})"
            )
    if not verified:
        raise SignatureError("note carries no signature from a known key")
    return text, tuple(v for k, v in known.items() if k in verified)


def open_note_by_any_set(
    note: bytes, key_sets: Sequence[Sequence[NoteVerifier]]
) -> tuple[bytes, tuple[NoteVerifier, ...]]:
    """Verify ``note`` signed by every key of at least one of ``key_sets``.

    This is how a log's checkpoint keys rotate: each key version is a set (an Ed25519 and an
    ML-DSA-44 key); during a rollover the log signs with the old and the new set, so clients and
    witnesses pinning either keep verifying. Every signature line by any known key must verify.
    """
    known = [key for key_set in key_sets for key in key_set]
    if not key_sets or any(not key_set for key_set in key_sets):
        raise InputError("a checkpoint needs at least one non-empty trusted key set")
    text, verified = open_note(note, list(dict.fromkeys(known)), required=())
    signed = {(v.name, v.key_id) for v in verified}
    if not any(all((k.name, k.key_id) in signed for k in key_set) for key_set in key_sets):
        raise SignatureError("note is not signed by every key of any trusted log key version")
    return text, verified
