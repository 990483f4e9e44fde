"""Which model signers a core trusts, and whether it requires a signature at all.

``<state>/model-signers.json`` (JSON, written by the operator)::

    {"require": true,
     "signers": [
       {"method": "key", "identity": "key:sha256:<hex>", "pem": "-----BEGIN PUBLIC KEY-----..."},
       {"method": "certificate", "identity": "ml@example.com", "pem": "<root CA PEM>"}]}

Fail closed: a file that does not parse refuses every registration; a signed model whose claimed
identity is not listed is refused; with ``require`` an unsigned model is refused. Without the file
unsigned models are accepted and signed ones refused (the core could not check them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qward.errors import FormatError, SignatureError
from qward.provenance.model_signature import (
    ModelSignature,
    SignatureRecord,
    TrustedSigner,
    verify_model_signature,
)

__all__ = ["SIGNER_POLICY_FILE", "SignerPolicy"]

SIGNER_POLICY_FILE = "model-signers.json"
_MAX_POLICY_BYTES = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class SignerPolicy:
    """The trusted signers by identity, and whether unsigned models are refused."""

    require: bool = False
    signers: tuple[TrustedSigner, ...] = ()

    @classmethod
    def from_bytes(cls, data: bytes) -> SignerPolicy:
        """Parse the policy file; ``FormatError`` naming what is wrong."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{SIGNER_POLICY_FILE}: not JSON: {exc}") from None
        if not isinstance(doc, dict) or set(doc) - {"require", "signers"}:
            raise FormatError(f"{SIGNER_POLICY_FILE}: an object with require and signers")
        require, entries = doc.get("require", False), doc.get("signers", [])
        if not isinstance(require, bool) or not isinstance(entries, list):
            raise FormatError(f"{SIGNER_POLICY_FILE}: require is a bool, signers a list")
        return cls(require=require, signers=tuple(_signer(e) for e in entries))

    @classmethod
    def load(cls, state_dir: Path) -> SignerPolicy:
        """The policy in ``state_dir``, or the default (nothing required, nobody trusted)."""
        path = state_dir / SIGNER_POLICY_FILE
        if not path.exists():
            return cls()
        data = path.read_bytes()
        if len(data) > _MAX_POLICY_BYTES:
            raise FormatError(f"{SIGNER_POLICY_FILE} is over {_MAX_POLICY_BYTES} bytes")
        return cls.from_bytes(data)

    def check(self, model: bytes, signature: ModelSignature | None) -> SignatureRecord | None:
        """Verify a model's signature under this policy: its record, ``None`` for an unsigned
        model the policy allows, or a ``VerificationError``."""
        if signature is None:
            if self.require:
                raise SignatureError("this core requires signed models; the model is unsigned")
            return None
        for signer in self.signers:
            if signer.identity == signature.identity:
                return verify_model_signature(model, signature, signer=signer)
        raise SignatureError(
            f"model signer {signature.identity!r} is not trusted by this core "
            f"({SIGNER_POLICY_FILE})"
        )


def _signer(entry: object) -> TrustedSigner:
    if not isinstance(entry, dict) or set(entry) != {"method", "identity", "pem"}:
        raise FormatError(f"{SIGNER_POLICY_FILE}: each signer has exactly method, identity, pem")
    if not all(isinstance(v, str) for v in entry.values()):
        raise FormatError(f"{SIGNER_POLICY_FILE}: signer fields are strings")
    method = entry["method"]
    if method not in ("key", "certificate"):
        raise FormatError(f"{SIGNER_POLICY_FILE}: unknown signer method {method!r}")
    return TrustedSigner(method=method, identity=entry["identity"], pem=entry["pem"].encode())
