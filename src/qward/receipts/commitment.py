"""What a receipt says about its input: a plain digest, or a salted commitment.

A plain SHA-256 of the input lets anyone holding the log confirm a guessed input, which matters
for low-entropy data (a yes/no field, a diagnosis code). A client that wants to prevent that sends
a fresh 32-byte salt *inside* the sealed input; the receipt then records only
``hmac_sha256 = HMAC-SHA256(salt, label || canonical input encoding)``. Without the salt, which
only the client keeps, the commitment confirms nothing; with it, anyone can check the input.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from qward.errors import FormatError, VerificationError
from qward.tensors import Tensor, encode_tensors, tensors_digest

__all__ = [
    "INPUT_CONTENT_TYPE",
    "SALTED_INPUT_CONTENT_TYPE",
    "SALT_BYTES",
    "check_input",
    "input_commitment",
    "input_section",
    "salted_plaintext",
    "split_salted",
]

INPUT_CONTENT_TYPE = "application/vnd.qward.tensors"
#: A sealed input whose plaintext is a 32-byte salt followed by the tensor encoding.
SALTED_INPUT_CONTENT_TYPE = "application/vnd.qward.salted-tensors"
SALT_BYTES = 32
_LABEL = b"qward/input-commitment/v1\x00"


def input_commitment(salt: bytes, inputs: Sequence[Tensor]) -> str:
    """HMAC-SHA256 of the canonical input encoding under ``salt``, as hex."""
    if len(salt) != SALT_BYTES:
        raise FormatError(f"an input salt is {SALT_BYTES} bytes, not {len(salt)}")
    return hmac.new(salt, _LABEL + encode_tensors(inputs), hashlib.sha256).hexdigest()


def input_section(inputs: Sequence[Tensor], salt: bytes | None) -> dict[str, str]:
    """The receipt's ``input`` section: the commitment if salted, else the plain digest."""
    if salt is None:
        return {"sha256": tensors_digest(inputs)}
    return {"hmac_sha256": input_commitment(salt, inputs)}


def check_input(
    section: Mapping[str, object], inputs: Sequence[Tensor], salt: bytes | None
) -> None:
    """Raise ``VerificationError`` unless ``inputs`` (with ``salt`` if committed) match."""
    if "hmac_sha256" in section:
        if salt is None:
            raise VerificationError(
                "the receipt commits to its input with a salt; the salt is needed to check it"
            )
        expected, actual = section["hmac_sha256"], input_commitment(salt, inputs)
    else:
        expected, actual = section.get("sha256"), tensors_digest(inputs)
    if not isinstance(expected, str) or not hmac.compare_digest(expected, actual):
        raise VerificationError("these inputs are not the inputs the receipt records")


def salted_plaintext(salt: bytes, encoded_inputs: bytes) -> bytes:
    """The plaintext sealed as ``SALTED_INPUT_CONTENT_TYPE``."""
    if len(salt) != SALT_BYTES:
        raise FormatError(f"an input salt is {SALT_BYTES} bytes, not {len(salt)}")
    return salt + encoded_inputs


def split_salted(plaintext: bytes) -> tuple[bytes, bytes]:
    """(salt, tensor encoding) of an opened ``SALTED_INPUT_CONTENT_TYPE`` plaintext."""
    if len(plaintext) < SALT_BYTES:
        raise FormatError("salted input is shorter than its salt")
    return plaintext[:SALT_BYTES], plaintext[SALT_BYTES:]
