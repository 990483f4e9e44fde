"""TPM 2.0 structures a quote is made of: strict, bounded marshal and unmarshal.

Layouts follow the TCG "TPM 2.0 Library, Part 2: Structures" (big-endian, sizes in the
``TPM2B`` prefixes): ``TPMS_ATTEST`` (§10.12.12) carrying ``TPMS_QUOTE_INFO`` (§10.12.4),
``TPML_PCR_SELECTION`` (§10.9.7), ``TPMT_SIGNATURE`` (§11.3.4) and ``TPMT_PUBLIC`` (§12.2.4).
Every reader goes through one cursor that refuses to read past the end and every ``from_bytes``
refuses trailing bytes, so a truncated or padded structure is a ``FormatError``. This module is
pure: a TPM producer marshals with it, the verifier unmarshals with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from qward.errors import FormatError

__all__ = [
    "BANKS",
    "TPMA_OBJECT_RESTRICTED_SIGN",
    "TPM_ALG_ECC",
    "TPM_ALG_ECDSA",
    "TPM_ALG_NULL",
    "TPM_ALG_RSA",
    "TPM_ALG_RSAPSS",
    "TPM_ALG_RSASSA",
    "TPM_ALG_SHA256",
    "TPM_ECC_NIST_P256",
    "TPM_GENERATED_VALUE",
    "TPM_ST_ATTEST_QUOTE",
    "Cursor",
    "TPMSAttest",
    "TPMSClockInfo",
    "TPMSPCRSelection",
    "TPMTSignature",
    "is_restricted_signing_key",
    "public_key_from_tpmt_public",
    "tpm2b",
]

#: TPMA_OBJECT ``restricted`` (bit 16) and ``sign`` (bit 18).
TPMA_OBJECT_RESTRICTED_SIGN = (1 << 16) | (1 << 18)
TPM_GENERATED_VALUE = 0xFF544347  # "\xffTCG": the TPM made this structure itself
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_RSA = 0x0001
TPM_ALG_SHA256 = 0x000B
TPM_ALG_NULL = 0x0010
TPM_ALG_RSASSA = 0x0014
TPM_ALG_RSAPSS = 0x0016
TPM_ALG_ECDSA = 0x0018
TPM_ALG_ECDAA = 0x001A
TPM_ALG_ECC = 0x0023
TPM_ECC_NIST_P256 = 0x0003
TPM_ECC_NIST_P384 = 0x0004
#: PCR banks by TPM_ALG_ID, with the name used in ``"sha256:N"`` keys and the digest size.
BANKS: dict[int, tuple[str, int]] = {
    0x0004: ("sha1", 20),
    TPM_ALG_SHA256: ("sha256", 32),
    0x000C: ("sha384", 48),
    0x000D: ("sha512", 64),
}
_MAX_TPM2B = 1024  # larger than any TPM2B a quote carries (an RSA-4096 signature is 512 bytes)
_MAX_NAME = 2 + 64  # TPMU_NAME: an algorithm id and the largest digest
_MAX_DATA = 2 + 64  # TPM2B_DATA holds at most sizeof(TPMT_HA)
_MAX_BANKS = 16  # HASH_COUNT is at most the number of hash algorithms a TPM implements
_MAX_SELECT = 8  # PCR_SELECT_MAX bytes: 64 PCRs, well above any TPM's 24


class Cursor:
    """Reads big-endian TPM fields from bytes; reading past the end is a ``FormatError``."""

    def __init__(self, data: bytes, *, what: str) -> None:
        self._data = bytes(data)
        self._at = 0
        self._what = what

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        if n < 0 or self._at + n > len(self._data):
            raise FormatError(f"{self._what}: truncated at byte {self._at} (wanted {n} more)")
        out = self._data[self._at : self._at + n]
        self._at += n
        return out

    def uint(self, size: int) -> int:
        """An unsigned big-endian integer of ``size`` bytes."""
        return int.from_bytes(self.take(size), "big")

    def tpm2b(self, *, limit: int = _MAX_TPM2B) -> bytes:
        """A ``TPM2B``: a 2-byte size, then that many bytes (at most ``limit``)."""
        size = self.uint(2)
        if size > limit:
            raise FormatError(f"{self._what}: a {size}-byte field is over its {limit}-byte bound")
        return self.take(size)

    def end(self) -> None:
        """The structure must have been consumed exactly."""
        if self._at != len(self._data):
            raise FormatError(f"{self._what}: {len(self._data) - self._at} trailing bytes")


def tpm2b(data: bytes) -> bytes:
    """Marshal ``data`` as a ``TPM2B`` (2-byte size prefix)."""
    if len(data) > 0xFFFF:
        raise FormatError("a TPM2B holds at most 65535 bytes")
    return len(data).to_bytes(2, "big") + data


@dataclass(frozen=True, kw_only=True)
class TPMSPCRSelection:
    """One bank's PCR selection: the hash algorithm and the selected indices, ascending."""

    hash_alg: int
    indices: tuple[int, ...]
    size_of_select: int = 3

    def to_bytes(self) -> bytes:
        """Marshal as ``TPMS_PCR_SELECTION``."""
        bitmap = bytearray(self.size_of_select)
        for index in self.indices:
            if not 0 <= index < 8 * self.size_of_select:
                raise FormatError(f"PCR {index} does not fit a {self.size_of_select}-byte map")
            bitmap[index // 8] |= 1 << (index % 8)
        return self.hash_alg.to_bytes(2, "big") + bytes([self.size_of_select]) + bytes(bitmap)

    @classmethod
    def read(cls, cursor: Cursor) -> TPMSPCRSelection:
        """Unmarshal one ``TPMS_PCR_SELECTION`` at ``cursor``."""
        hash_alg, size = cursor.uint(2), cursor.uint(1)
        if size > _MAX_SELECT:
            raise FormatError(f"PCR selection: sizeofSelect {size} is over {_MAX_SELECT}")
        bitmap = cursor.take(size)
        indices = tuple(i for i in range(8 * size) if bitmap[i // 8] >> (i % 8) & 1)
        return cls(hash_alg=hash_alg, indices=indices, size_of_select=size)


@dataclass(frozen=True, kw_only=True)
class TPMSClockInfo:
    """``TPMS_CLOCK_INFO``: milliseconds the TPM has run, its reset and restart counts."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool

    def to_bytes(self) -> bytes:
        """Marshal as ``TPMS_CLOCK_INFO``."""
        return (
            self.clock.to_bytes(8, "big")
            + self.reset_count.to_bytes(4, "big")
            + self.restart_count.to_bytes(4, "big")
            + bytes([1 if self.safe else 0])
        )

    @classmethod
    def read(cls, cursor: Cursor) -> TPMSClockInfo:
        """Unmarshal ``TPMS_CLOCK_INFO``; ``safe`` is a ``TPMI_YES_NO`` (0 or 1 only)."""
        clock, reset, restart, safe = cursor.uint(8), cursor.uint(4), cursor.uint(4), cursor.uint(1)
        if safe > 1:
            raise FormatError(f"clock info: safe must be 0 or 1, got {safe}")
        return cls(clock=clock, reset_count=reset, restart_count=restart, safe=safe == 1)


@dataclass(frozen=True, kw_only=True)
class TPMSAttest:
    """``TPMS_ATTEST`` whose ``attested`` member is a ``TPMS_QUOTE_INFO``."""

    qualified_signer: bytes
    extra_data: bytes
    clock_info: TPMSClockInfo
    firmware_version: int
    pcr_selections: tuple[TPMSPCRSelection, ...]
    pcr_digest: bytes
    magic: int = TPM_GENERATED_VALUE
    type: int = TPM_ST_ATTEST_QUOTE

    def to_bytes(self) -> bytes:
        """Marshal as the bytes a TPM signs for ``TPM2_Quote``."""
        return b"".join(
            [
                self.magic.to_bytes(4, "big"),
                self.type.to_bytes(2, "big"),
                tpm2b(self.qualified_signer),
                tpm2b(self.extra_data),
                self.clock_info.to_bytes(),
                self.firmware_version.to_bytes(8, "big"),
                len(self.pcr_selections).to_bytes(4, "big"),
                *(s.to_bytes() for s in self.pcr_selections),
                tpm2b(self.pcr_digest),
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TPMSAttest:
        """Strictly unmarshal a quote's ``TPMS_ATTEST`` (any other ``type`` is refused)."""
        cursor = Cursor(data, what="TPMS_ATTEST")
        magic, kind = cursor.uint(4), cursor.uint(2)
        if kind != TPM_ST_ATTEST_QUOTE:
            raise FormatError(f"TPMS_ATTEST: type {kind:#06x} is not TPM_ST_ATTEST_QUOTE")
        signer = cursor.tpm2b(limit=_MAX_NAME)
        extra = cursor.tpm2b(limit=_MAX_DATA)
        clock_info = TPMSClockInfo.read(cursor)
        firmware = cursor.uint(8)
        count = cursor.uint(4)
        if count > _MAX_BANKS:
            raise FormatError(f"TPML_PCR_SELECTION: {count} banks is over {_MAX_BANKS}")
        selections = tuple(TPMSPCRSelection.read(cursor) for _ in range(count))
        digest = cursor.tpm2b(limit=64)
        cursor.end()
        return cls(
            magic=magic,
            type=kind,
            qualified_signer=signer,
            extra_data=extra,
            clock_info=clock_info,
            firmware_version=firmware,
            pcr_selections=selections,
            pcr_digest=digest,
        )


@dataclass(frozen=True, kw_only=True)
class TPMTSignature:
    """``TPMT_SIGNATURE`` for RSASSA, RSAPSS (``signature``) or ECDSA (``r``, ``s``)."""

    sig_alg: int
    hash_alg: int
    signature: bytes = b""
    r: bytes = b""
    s: bytes = b""

    def to_bytes(self) -> bytes:
        """Marshal as ``TPMT_SIGNATURE``."""
        head = self.sig_alg.to_bytes(2, "big") + self.hash_alg.to_bytes(2, "big")
        if self.sig_alg == TPM_ALG_ECDSA:
            return head + tpm2b(self.r) + tpm2b(self.s)
        if self.sig_alg in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS):
            return head + tpm2b(self.signature)
        raise FormatError(f"TPMT_SIGNATURE: unsupported sigAlg {self.sig_alg:#06x}")

    @classmethod
    def from_bytes(cls, data: bytes) -> TPMTSignature:
        """Strictly unmarshal an RSASSA, RSAPSS or ECDSA ``TPMT_SIGNATURE``."""
        cursor = Cursor(data, what="TPMT_SIGNATURE")
        sig_alg, hash_alg = cursor.uint(2), cursor.uint(2)
        if sig_alg == TPM_ALG_ECDSA:
            r, s = cursor.tpm2b(limit=66), cursor.tpm2b(limit=66)
            cursor.end()
            return cls(sig_alg=sig_alg, hash_alg=hash_alg, r=r, s=s)
        if sig_alg in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS):
            signature = cursor.tpm2b(limit=512)
            cursor.end()
            return cls(sig_alg=sig_alg, hash_alg=hash_alg, signature=signature)
        raise FormatError(f"TPMT_SIGNATURE: unsupported sigAlg {sig_alg:#06x}")


def _skip_scheme(cursor: Cursor) -> None:
    """Skip a ``TPMT_SYM_DEF_OBJECT`` or ``TPMT_*_SCHEME``/``TPMT_KDF_SCHEME`` body."""
    if cursor.uint(2) != TPM_ALG_NULL:
        cursor.take(2)


def is_restricted_signing_key(data: bytes) -> bool:
    """Whether a marshaled ``TPMT_PUBLIC`` has ``restricted`` and ``sign`` set (Part 2 §8.3):
    a key that signs only what the TPM itself generated, as an attestation key must."""
    cursor = Cursor(data, what="TPMT_PUBLIC")
    cursor.take(2 + 2)  # type, nameAlg
    attributes = cursor.uint(4)
    return attributes & TPMA_OBJECT_RESTRICTED_SIGN == TPMA_OBJECT_RESTRICTED_SIGN


def public_key_from_tpmt_public(data: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The RSA or NIST P-256/P-384 public key in a marshaled ``TPMT_PUBLIC``."""
    cursor = Cursor(data, what="TPMT_PUBLIC")
    kind = cursor.uint(2)
    cursor.take(2 + 4)  # nameAlg, objectAttributes
    cursor.tpm2b(limit=64)  # authPolicy
    if cursor.uint(2) != TPM_ALG_NULL:  # symmetric: algorithm, then keyBits and mode
        cursor.take(4)
    try:
        if kind == TPM_ALG_RSA:
            _skip_scheme(cursor)
            bits, exponent = cursor.uint(2), cursor.uint(4) or 65537
            modulus = int.from_bytes(cursor.tpm2b(limit=512), "big")
            cursor.end()
            if modulus.bit_length() != bits:
                raise FormatError(f"TPMT_PUBLIC: modulus is not {bits} bits")
            return rsa.RSAPublicNumbers(exponent, modulus).public_key()
        if kind == TPM_ALG_ECC:
            scheme = cursor.uint(2)
            if scheme != TPM_ALG_NULL:
                cursor.take(4 if scheme == TPM_ALG_ECDAA else 2)
            curve_id = cursor.uint(2)
            _skip_scheme(cursor)  # kdf
            x, y = cursor.tpm2b(limit=66), cursor.tpm2b(limit=66)
            cursor.end()
            curves: dict[int, ec.EllipticCurve] = {
                TPM_ECC_NIST_P256: ec.SECP256R1(),
                TPM_ECC_NIST_P384: ec.SECP384R1(),
            }
            if curve_id not in curves:
                raise FormatError(f"TPMT_PUBLIC: unsupported curve {curve_id:#06x}")
            point = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curves[curve_id]
            )
            return point.public_key()
    except (ValueError, TypeError):
        raise FormatError("TPMT_PUBLIC: the key is not a valid public key") from None
    raise FormatError(f"TPMT_PUBLIC: unsupported key type {kind:#06x}")
