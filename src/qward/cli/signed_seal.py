"""The model-signing options of ``qward seal``: read the signature and the pinned signer."""

from __future__ import annotations

from pathlib import Path

from qward.encoding import read_limited
from qward.errors import InputError
from qward.provenance.model_signature import (
    MAX_SIGNATURE_BYTES,
    Method,
    ModelSignature,
    TrustedSigner,
)

__all__ = ["model_signature"]

_MAX_PEM = 256 * 1024


def model_signature(
    model: Path,
    *,
    require: bool,
    signature: Path | None,
    identity: str | None,
    signer_key: Path | None,
    signer_root: Path | None,
) -> tuple[ModelSignature | None, TrustedSigner | None]:
    """The signature to verify before sealing and its pinned signer, or ``(None, None)`` for
    an unsigned seal; an ``InputError`` naming the missing or conflicting option."""
    given = signature is not None or identity is not None or signer_key or signer_root
    if not require and not given:
        return None, None
    if not require:
        raise InputError(
            "--signature, --identity, --signer-key and --signer-root need --require-signature"
        )
    if signature is None or identity is None:
        raise InputError("--require-signature needs --signature and --identity")
    method: Method
    if signer_key is not None and signer_root is None:
        method, pin = "key", signer_key
    elif signer_root is not None and signer_key is None:
        method, pin = "certificate", signer_root
    else:
        raise InputError("--require-signature needs exactly one of --signer-key or --signer-root")
    signer = TrustedSigner(
        method=method,
        identity=identity,
        pem=read_limited(str(pin), limit=_MAX_PEM, what="signer key or root"),
    )
    bundle = read_limited(str(signature), limit=MAX_SIGNATURE_BYTES, what="model signature")
    return ModelSignature(bundle=bundle, file_name=model.name, identity=identity), signer
