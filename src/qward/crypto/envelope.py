"""The sealed-artifact format for models and inputs, and sealing with a public key.

Layout (lengths big-endian)::

    b"QWSEAL\\x00\\x01" | u32 len | header | u32 len | wrap | AES-256-GCM ciphertext || tag

``header`` is canonical JSON describing the payload (format, content type, nonce, key commitment,
plaintext length); it is the GCM associated data, so it cannot be altered. ``wrap`` is canonical
JSON holding the suite id, the recipient key id and the HPKE-encrypted data key. The data key's
HPKE ``info`` binds it to the header digest, so a wrapped key cannot be moved to another artifact;
keeping the wrap outside the AAD is what allows re-wrapping to a new key without touching the
payload.

AES-GCM alone is not key-committing, so the header carries a commitment derived from the data key
and checked (in constant time) before decryption.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qward.crypto.keys import HPKERecipientKey
from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import FormatError, InputError
from qward.suites import (
    KEM_SUITES,
    MLKEM768_HKDF_SHA256_AES_256_GCM,
    MLKEM768_X25519_HKDF_SHA256_AES_256_GCM,
    MLKEM1024_HKDF_SHA384_AES_256_GCM,
    X25519_HKDF_SHA256_AES_256_GCM,
    SuitePolicy,
    require_suite,
)

__all__ = [
    "MAGIC",
    "MAX_SEALED_BYTES",
    "SEALED_FORMAT",
    "KeyWrap",
    "SealedArtifact",
    "derive_payload_keys",
    "hpke_info",
    "hpke_suite",
    "parse_key_wrap",
    "parse_sealed",
    "seal",
    "wrap_data_key",
]

MAGIC = b"QWSEAL\x00\x01"
SEALED_FORMAT = "qward/sealed/v1"
MAX_SEALED_BYTES = 2 * 1024 * 1024 * 1024
_MAX_SECTION = 64 * 1024
_HEADER_MEMBERS = frozenset({"format", "content_type", "nonce", "commitment", "length"})
_NONCE_LEN = 12
_TAG_LEN = 16
_DEK_LEN = 32
_U32 = struct.Struct(">I")


_HPKE_SUITES = {
    X25519_HKDF_SHA256_AES_256_GCM: (hpke.KEM.X25519, hpke.KDF.HKDF_SHA256),
    MLKEM768_X25519_HKDF_SHA256_AES_256_GCM: (hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256),
    MLKEM768_HKDF_SHA256_AES_256_GCM: (hpke.KEM.MLKEM768, hpke.KDF.HKDF_SHA256),
    MLKEM1024_HKDF_SHA384_AES_256_GCM: (hpke.KEM.MLKEM1024, hpke.KDF.HKDF_SHA384),
}


def hpke_suite(suite: str = MLKEM768_X25519_HKDF_SHA256_AES_256_GCM) -> hpke.Suite:
    """The RFC 9180 suite behind a qward KEM suite id (all use AES-256-GCM as HPKE AEAD)."""
    kem, kdf = _HPKE_SUITES[require_suite(suite, expected=KEM_SUITES, what="HPKE")]
    return hpke.Suite(kem, kdf, hpke.AEAD.AES_256_GCM)


def hpke_info(header: bytes) -> bytes:
    """HPKE ``info`` for a data key: binds the wrap to one artifact's header."""
    return b"qward/sealed/v1/dek\x00" + hashlib.sha256(header).digest()


def _hkdf(dek: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(dek)


def derive_payload_keys(dek: bytes) -> tuple[bytes, bytes]:
    """(AES-256-GCM key, key commitment) derived from a data key."""
    return _hkdf(dek, b"qward/sealed/v1/payload-key"), _hkdf(dek, b"qward/sealed/v1/commitment")


@dataclass(frozen=True, kw_only=True)
class KeyWrap:
    """The HPKE-wrapped data key of a sealed artifact or stream, named by suite and key id."""

    suite: str
    key_id: str
    encapsulated_key: bytes


def wrap_data_key(
    dek: bytes,
    *,
    recipient: HPKERecipientKey,
    header: bytes,
    policy: SuitePolicy | None = None,
) -> bytes:
    """The canonical key-wrap section: ``dek`` HPKE-sealed to ``recipient``, bound to ``header``.

    With a ``policy``, a recipient whose suite the policy does not accept for new seals is
    refused (``CryptoError``) before anything is encrypted.
    """
    if policy is not None:
        policy.require_new(recipient.suite, what=f"sealing to key {recipient.key_id}")
    enc = hpke_suite(recipient.suite).encrypt(dek, recipient.to_hpke(), info=hpke_info(header))
    return canonical_json(
        {"suite": recipient.suite, "key_id": recipient.key_id, "enc": b64encode(enc)}
    )


def parse_key_wrap(wrap: bytes, *, what: str) -> KeyWrap:
    """Parse a key-wrap section, checking its suite."""
    doc = parse_canonical_json(wrap, what=f"{what} key wrap")
    if set(doc) != {"suite", "key_id", "enc"}:
        raise FormatError(f"{what}: key wrap needs exactly suite, key_id and enc")
    suite = require_suite(doc.get("suite"), expected=KEM_SUITES, what=what)
    key_id = doc.get("key_id")
    if not isinstance(key_id, str):
        raise FormatError(f"{what}: key_id must be a string")
    enc = b64decode(doc.get("enc"), what=f"{what} enc")
    # The wrap is HPKE's single-shot output: the KEM's encapsulation, then the data key sealed
    # with AES-256-GCM. Each KEM has one encapsulation size, so an edited suite id is caught
    # here, as bad input, instead of reaching HPKE with a key of another algorithm.
    expected = int(_HPKE_SUITES[suite][0].enc_length()) + _DEK_LEN + _TAG_LEN
    if len(enc) != expected:
        raise FormatError(
            f"{what}: key wrap of {len(enc)} bytes does not fit suite {suite} ({expected} bytes)"
        )
    return KeyWrap(suite=suite, key_id=key_id, encapsulated_key=enc)


@dataclass(frozen=True, kw_only=True)
class SealedArtifact:
    """A parsed, not yet opened, sealed artifact."""

    header: bytes
    content_type: str
    nonce: bytes
    commitment: bytes
    length: int
    suite: str
    key_id: str
    encapsulated_key: bytes
    ciphertext: bytes

    @property
    def aad(self) -> bytes:
        """GCM associated data: the magic and the header."""
        return MAGIC + self.header


def seal(
    plaintext: bytes,
    *,
    recipient: HPKERecipientKey,
    content_type: str,
    random_bytes: Callable[[int], bytes] = os.urandom,
    policy: SuitePolicy | None = None,
    extra_header: Mapping[str, object] | None = None,
) -> bytes:
    """Seal ``plaintext`` to ``recipient``; only the holder of its private key can open it.

    With a ``policy``, a recipient under a suite the policy does not accept is refused.
    ``extra_header`` adds members to the authenticated (not encrypted) header, such as a model's
    signature; readers that do not know a member ignore it.
    """
    if len(plaintext) > MAX_SEALED_BYTES - _MAX_SECTION * 2:
        raise InputError(f"cannot seal {len(plaintext)} bytes: over the {MAX_SEALED_BYTES} limit")
    dek, nonce = random_bytes(_DEK_LEN), random_bytes(_NONCE_LEN)
    payload_key, commitment = derive_payload_keys(dek)
    extra = dict(extra_header or {})
    if extra.keys() & _HEADER_MEMBERS:
        raise InputError(f"extra header members may not replace {sorted(_HEADER_MEMBERS)}")
    header = canonical_json(
        {
            **extra,
            "format": SEALED_FORMAT,
            "content_type": content_type,
            "nonce": b64encode(nonce),
            "commitment": b64encode(commitment),
            "length": len(plaintext),
        }
    )
    wrap = wrap_data_key(dek, recipient=recipient, header=header, policy=policy)
    ciphertext = AESGCM(payload_key).encrypt(nonce, plaintext, MAGIC + header)
    return b"".join([MAGIC, _U32.pack(len(header)), header, _U32.pack(len(wrap)), wrap, ciphertext])


def _section(blob: bytes, offset: int, what: str) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise FormatError(f"sealed artifact: truncated before the {what}")
    (length,) = _U32.unpack_from(blob, offset)
    if length > _MAX_SECTION or offset + 4 + length > len(blob):
        raise FormatError(f"sealed artifact: {what} length {length} is invalid")
    return blob[offset + 4 : offset + 4 + length], offset + 4 + length


def parse_sealed(blob: bytes, *, limit: int = MAX_SEALED_BYTES) -> SealedArtifact:
    """Parse the framing of a sealed artifact without opening it."""
    if len(blob) > limit:
        raise FormatError(f"sealed artifact of {len(blob)} bytes is over the {limit} byte limit")
    if not blob.startswith(MAGIC):
        raise FormatError("not a qward sealed artifact (bad magic or unsupported version)")
    header, offset = _section(blob, len(MAGIC), "header")
    wrap_bytes, offset = _section(blob, offset, "key wrap")
    head = parse_canonical_json(header, what="sealed artifact header")
    wrap = parse_key_wrap(wrap_bytes, what="sealed artifact")
    if head.get("format") != SEALED_FORMAT:
        raise FormatError(f"sealed artifact: unsupported format {head.get('format')!r}")
    length, content_type = head.get("length"), head.get("content_type")
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise FormatError("sealed artifact: invalid plaintext length")
    if not isinstance(content_type, str):
        raise FormatError("sealed artifact: content_type must be a string")
    ciphertext = blob[offset:]
    if len(ciphertext) != length + _TAG_LEN:
        raise FormatError(
            f"sealed artifact: payload is {len(ciphertext)} bytes, "
            f"header promises {length + _TAG_LEN}"
        )
    nonce = b64decode(head.get("nonce"), what="sealed artifact nonce")
    commitment = b64decode(head.get("commitment"), what="sealed artifact commitment")
    if len(nonce) != _NONCE_LEN or len(commitment) != 32:
        raise FormatError("sealed artifact: nonce or commitment has the wrong length")
    return SealedArtifact(
        header=header,
        content_type=content_type,
        nonce=nonce,
        commitment=commitment,
        length=length,
        suite=wrap.suite,
        key_id=wrap.key_id,
        encapsulated_key=wrap.encapsulated_key,
        ciphertext=ciphertext,
    )
