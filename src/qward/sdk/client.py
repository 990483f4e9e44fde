"""The qward SDK: ``seal``, ``run``, ``verify``, ``replay``.

The SDK seals models and inputs on the caller's side with the core's public key (from a pinned
trust bundle), so plaintext never crosses the public service. Every receipt it returns has already
been verified offline against that trust bundle, and every output checked against the receipt.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qward.core_api import CoreInterface, GenerationReplay, ModelInfo, ReplayResult
from qward.crypto.envelope import seal as _seal
from qward.encoding import canonical_json
from qward.errors import InputError, ReplayMismatchError, VerificationError
from qward.provenance.model_signature import ModelSignature, TrustedSigner, signed_model_header
from qward.receipts.commitment import (
    INPUT_CONTENT_TYPE,
    SALT_BYTES,
    SALTED_INPUT_CONTENT_TYPE,
    check_input,
    salted_plaintext,
)
from qward.receipts.generation import (
    GENERATION_REQUEST_CONTENT_TYPE,
    check_completion,
    token_ids_sha256,
)
from qward.receipts.replay_evidence import verify_replay_verdict
from qward.receipts.replay_verdict import BITWISE, WITHIN_TOLERANCE
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import VerifiedReceipt, Verifier
from qward.runtime.circuit_spec import CIRCUIT_CONTENT_TYPE
from qward.runtime.model_checks import check_model_bytes
from qward.tensors import Tensor, encode_tensors, tensors_digest

__all__ = [
    "CIRCUIT_CONTENT_TYPE",
    "INPUT_CONTENT_TYPE",
    "MODEL_CONTENT_TYPE",
    "Client",
    "VerifiedGeneration",
    "VerifiedRun",
    "seal_generation_request",
    "seal_input",
    "seal_model",
    "verify",
]

MODEL_CONTENT_TYPE = "application/onnx"


def seal_model(
    model: bytes,
    *,
    trust: TrustBundle,
    signature: ModelSignature | None = None,
    signer: TrustedSigner | None = None,
) -> bytes:
    """Seal a model to the core named in ``trust``: an ONNX graph, or a ``qward/circuit/v1``
    spec (canonical JSON), which is sealed as ``CIRCUIT_CONTENT_TYPE``. Anything else (bytes
    that are not ONNX, an ONNX model with external data or failing ``onnx.checker``, an invalid
    spec) raises an ``InputError`` naming what is wrong.

    With a model-signing ``signature``, it is verified for ``signer`` first and travels in the
    sealed header, where the core verifies it again (``qward.provenance``)."""
    # Checked here so that garbage (random bytes, /etc/passwd) or a model reading external files
    # is refused before it is ever sealed; the core and the worker check again on their own.
    content_type = check_model_bytes(model)
    extra = None
    if signature is not None:
        if signer is None:
            raise InputError("a signed model is verified before sealing: name its signer")
        extra = signed_model_header(model, signature, signer=signer)
    return _seal(
        model, recipient=trust.hpke_recipient, content_type=content_type, extra_header=extra
    )


def seal_input(
    tensors: Sequence[Tensor], *, trust: TrustBundle, salt: bytes | None = None
) -> bytes:
    """Seal a set of input tensors to the core named in ``trust``.

    With ``salt`` (32 random bytes the caller keeps), the salt is sealed with the tensors and the
    receipt records only a salted commitment to the input (``qward.receipts.commitment``).
    """
    if salt is None:
        plaintext, content_type = encode_tensors(tensors), INPUT_CONTENT_TYPE
    else:
        plaintext = salted_plaintext(salt, encode_tensors(tensors))
        content_type = SALTED_INPUT_CONTENT_TYPE
    return _seal(plaintext, recipient=trust.hpke_recipient, content_type=content_type)


def seal_generation_request(request: dict[str, Any], *, trust: TrustBundle) -> bytes:
    """Seal a text-generation request (``{"mode": "chat", "messages": [...]}`` or
    ``{"mode": "completion", "prompt": ...}``, with ``"parameters"``) to the core."""
    return _seal(
        canonical_json(request),
        recipient=trust.hpke_recipient,
        content_type=GENERATION_REQUEST_CONTENT_TYPE,
    )


def verify(receipt: bytes, *, trust: TrustBundle) -> VerifiedReceipt:
    """Verify a receipt offline (signature, inclusion proof, checkpoint); raises on failure."""
    return Verifier(trust=trust).verify(receipt)


@dataclass(frozen=True, kw_only=True)
class VerifiedRun:
    """Outputs whose receipt verified and whose digests match it."""

    outputs: tuple[Tensor, ...]
    receipt: bytes
    verified: VerifiedReceipt
    #: The salt the receipt's input commitment uses, if the run committed to its input; keep it
    #: (it is what lets anyone check the input later, and it is never sent anywhere in clear).
    input_salt: bytes | None = None

    @property
    def log_index(self) -> int:
        """Where the receipt sits in the transparency log."""
        return self.verified.bundle.index


@dataclass(frozen=True, kw_only=True)
class VerifiedGeneration:
    """A text generation whose receipt verified and binds exactly this request, seed, token ids
    and text; ``record`` is the ``qward/generation/v1`` record (token ids, text, finish reason)."""

    record: dict[str, Any]
    receipt: bytes
    verified: VerifiedReceipt

    @property
    def text(self) -> str:
        """The generated text."""
        return str(self.record["text"])


class Client:
    """The SDK over any ``CoreInterface``, pinned to one ``TrustBundle``."""

    def __init__(self, core: CoreInterface, *, trust: TrustBundle) -> None:
        self._core = core
        self.trust = trust
        self._verifier = Verifier(trust=trust)

    def register(self, model: bytes, *, name: str, chat_template: str | None = None) -> ModelInfo:
        """Seal ``model`` locally and register it with the core (a GGUF model with the chat
        template to prompt it with, if its file carries none)."""
        sealed = seal_model(model, trust=self.trust)
        return self._core.register_model(sealed, name=name, chat_template=chat_template)

    def run(
        self,
        model_sha256: str,
        inputs: Sequence[Tensor],
        *,
        seed: int,
        parameters: dict[str, Any] | None = None,
        commit_input: bool = False,
    ) -> VerifiedRun:
        """Run a model on sealed inputs; verify the receipt and that it matches what came back.

        With ``commit_input``, a fresh salt travels sealed with the inputs and the receipt (and
        so the public log) holds only a salted commitment to them; the salt is returned in
        ``VerifiedRun.input_salt`` and nowhere else.
        """
        salt = secrets.token_bytes(SALT_BYTES) if commit_input else None
        result = self._core.run(
            model_sha256,
            seal_input(inputs, trust=self.trust, salt=salt),
            seed=seed,
            parameters=parameters or {},
        )
        verified = self._verifier.verify(result.receipt)
        body = verified.body
        checks = {"model": model_sha256, "output": tensors_digest(result.outputs)}
        for section, digest in checks.items():
            if body[section]["sha256"] != digest:
                raise VerificationError(f"receipt's {section} digest does not match this run")
        if (salt is None) != ("sha256" in body["input"]):
            raise VerificationError("receipt names its input differently than requested")
        check_input(body["input"], inputs, salt)
        if body["seed"] != seed:
            raise VerificationError("receipt records a different seed than requested")
        return VerifiedRun(
            outputs=result.outputs, receipt=result.receipt, verified=verified, input_salt=salt
        )

    def generate(
        self, model: str, request: dict[str, Any], *, seed: int, by_name: bool = True
    ) -> VerifiedGeneration:
        """Generate text with a GGUF model (by name, or digest with ``by_name=False``); the
        request is sealed here, and the receipt checked against it before anything returns."""
        sealed = seal_generation_request(request, trust=self.trust)
        result = self._core.generate(model, sealed, seed=seed, by_name=by_name)
        verified = self._verifier.verify(result.receipt)
        body, record = verified.body, result.record
        check_completion(body, token_ids=record["token_ids"], text=record["text"])
        if body["input"]["sha256"] != hashlib.sha256(canonical_json(request)).hexdigest():
            raise VerificationError("the receipt names a different request than was sent")
        if body["seed"] != seed:
            raise VerificationError("receipt records a different seed than requested")
        return VerifiedGeneration(record=record, receipt=result.receipt, verified=verified)

    def _issuer_verifier(self, issuer_trust: TrustBundle | None) -> Verifier:
        return self._verifier if issuer_trust is None else Verifier(trust=issuer_trust)

    def _check_verdict(
        self, document: bytes, receipt: bytes, issuer_trust: TrustBundle | None
    ) -> None:
        """The core's logged verdict must be in its pinned log and name this receipt."""
        verify_replay_verdict(
            document, trust=self.trust, receipt=receipt, receipt_trust=issuer_trust
        )

    def replay_generation(
        self,
        receipt: bytes,
        request: dict[str, Any],
        *,
        original_token_ids: Sequence[int] | None = None,
        issuer_trust: TrustBundle | None = None,
    ) -> GenerationReplay:
        """Regenerate a receipted generation; only identical token ids and text pass, and a
        ``ReplayMismatchError`` says where the replay diverged. A receipt from another log
        (an independent replay here) is checked against that log's ``issuer_trust``."""
        body = self._issuer_verifier(issuer_trust).verify(receipt).body
        if original_token_ids is not None and token_ids_sha256(original_token_ids) != body.get(
            "runtime", {}
        ).get("generation", {}).get("token_ids_sha256"):
            raise VerificationError("the original token ids are not the ones the receipt binds")
        result = self._core.replay_generation(
            receipt,
            seal_generation_request(request, trust=self.trust),
            list(original_token_ids) if original_token_ids is not None else None,
            issuer_trust.to_bytes() if issuer_trust is not None else None,
        )
        self._check_verdict(result.verdict_document, receipt, issuer_trust)
        if result.verdict != BITWISE or result.output_sha256 != result.expected_sha256:
            raise ReplayMismatchError(
                f"replay verdict {result.verdict}: {result.detail}",
                verdict_document=result.verdict_document,
            )
        return result

    def replay(
        self,
        receipt: bytes,
        inputs: Sequence[Tensor],
        *,
        original_outputs: Sequence[Tensor] | None = None,
        input_salt: bytes | None = None,
        issuer_trust: TrustBundle | None = None,
    ) -> ReplayResult:
        """Replay a receipt. On the same platform and environment only bit-identical outputs
        pass; elsewhere, given the original outputs, the declared tolerance applies. Anything
        else raises ``ReplayMismatchError``. Either way the verdict is logged, and its document
        (``result.verdict_document``) is checked here against this core's pinned trust. A receipt
        from another log (an independent replay) is checked against ``issuer_trust``."""
        verified = self._issuer_verifier(issuer_trust).verify(receipt)
        check_input(verified.body["input"], inputs, input_salt)
        salt = input_salt if "hmac_sha256" in verified.body["input"] else None
        result = self._core.replay(
            receipt,
            seal_input(inputs, trust=self.trust, salt=salt),
            tuple(original_outputs) if original_outputs is not None else None,
            issuer_trust.to_bytes() if issuer_trust is not None else None,
        )
        self._check_verdict(result.verdict_document, receipt, issuer_trust)
        expected = verified.body["output"]["sha256"]
        if result.verdict == BITWISE and tensors_digest(result.outputs) == expected:
            return result
        if result.verdict == WITHIN_TOLERANCE and original_outputs is not None:
            return result
        raise ReplayMismatchError(
            f"replay verdict {result.verdict}: {result.detail} "
            f"(replay {result.output_sha256}, receipt {result.expected_sha256})",
            verdict_document=result.verdict_document,
        )
