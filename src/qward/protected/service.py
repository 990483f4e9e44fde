"""The protected core's operations: register, run, replay, and log queries.

Each operation is fail-closed: the key use it needs is sequenced in the transparency log before the
key is touched, and a run's outputs are released only after its signed receipt is in the log and a
checkpoint covering it has been published.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from qward import __version__
from qward.attestation.binding import MAX_NONCE_BYTES, MIN_NONCE_BYTES
from qward.attestation.response import AttestationResponse
from qward.crypto.envelope import SealedArtifact, parse_sealed
from qward.encoding import b64decode, b64encode, canonical_json, parse_canonical_json
from qward.errors import AuditError, InputError, QwardError
from qward.protected.attestation import CoreAttestation, SoftwareOnlyAttester
from qward.protected.auditor import Auditor
from qward.protected.erasure import erase_subject, reveal_fields
from qward.protected.generation import (
    GENERATION_REQUEST_CONTENT_TYPE,
    MAX_GENERATION_REQUEST_BYTES,
    generation_receipt_body,
    judge_generation,
)
from qward.protected.key_admin import KEY_ADMIN_OPS, build_trust, check_unwrap
from qward.protected.keystore import CoreKeys
from qward.protected.model_provenance import registration_signature, signature_member
from qward.protected.models import (
    MAX_MODEL_BYTES,
    MODEL_CONTENT_TYPES,
    ModelEntry,
    ModelRegistry,
)
from qward.protected.opening import open_sealed
from qward.protected.personal import PersonalData
from qward.protected.replays import replay_verdict_record, verified_receipt
from qward.protected.tracing import tracer
from qward.receipts.commitment import (
    INPUT_CONTENT_TYPE,
    SALTED_INPUT_CONTENT_TYPE,
    input_section,
    split_salted,
)
from qward.receipts.entries import (
    access_entry,
    admin_entry,
    key_use_entry,
    receipt_entry,
)
from qward.receipts.generation import output_sha256
from qward.receipts.receipt import (
    CHECKPOINT_RECEIPT_FORMAT,
    CHECKPOINT_SIGNER,
    RECEIPT_FORMAT,
    SIGNING_CONTEXT,
    ReceiptBundle,
    ReceiptSigning,
)
from qward.receipts.replay_evidence import ReplayVerdictDocument
from qward.receipts.replay_verdict import judge, same_environment
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import VerifiedReceipt, Verifier
from qward.runtime.llm_profile import GGUF_CONTENT_TYPE
from qward.runtime.model_checks import check_model_bytes
from qward.tensors import Tensor, decode_tensors, encode_tensors, tensors_digest
from qward.tlog.sequencer import PublishTicket
from qward.tlog.witness_policy import WitnessPolicy

__all__ = ["INPUT_CONTENT_TYPE", "MODEL_CONTENT_TYPE", "CoreService", "Reply"]

_INPUT_TYPES = (INPUT_CONTENT_TYPE, SALTED_INPUT_CONTENT_TYPE)

MODEL_CONTENT_TYPE = "application/onnx"
MAX_INPUT_BYTES = 64 * 1024 * 1024
# Seeds go into receipts, canonical JSON: integers it carries exactly (RFC 8785, below 2**53).
_MAX_SEED = 2**53 - 1
_MAX_PARAMETERS_BYTES = 16 * 1024
# Admin actions performed by public tools (the token file lives beside the public server).
_PUBLIC_ADMIN_ACTIONS = frozenset({"token-created", "token-revoked"})

Reply = tuple[dict[str, Any], bytes]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class _Sources:
    """Where time and randomness come from; injected so tests can fix them."""

    clock: Callable[[], datetime] = _utc_now
    token: Callable[[], str] = lambda: secrets.token_hex(16)


class CoreService:
    """Holds the keys, the log and the workers; one instance per core process."""

    def __init__(
        self,
        *,
        keys: CoreKeys,
        auditor: Auditor,
        registry: ModelRegistry,
        sources: _Sources | None = None,
        attestation: CoreAttestation | None = None,
        receipt_signing: ReceiptSigning = ReceiptSigning.CHECKPOINT,
        personal: PersonalData | None = None,
    ) -> None:
        self._keys = keys
        self._personal = personal
        self._receipt_signing = receipt_signing
        self._auditor = auditor
        self._models = registry
        self._src = sources or _Sources()
        self.trust = build_trust(keys)
        self._verifier = Verifier(trust=self.trust)
        self.attestation = attestation or CoreAttestation(
            attester=SoftwareOnlyAttester(), record=self.record_published, clock=self._src.clock
        )
        self._closers: list[Callable[[], None]] = []

    def _now(self) -> str:
        return self._src.clock().strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def keys(self) -> CoreKeys:
        """The core's keys (for key administration)."""
        return self._keys

    @property
    def models(self) -> ModelRegistry:
        """The registered models (for key administration)."""
        return self._models

    def log_key_use(self, *, key_id: str, purpose: str, data: bytes) -> None:
        """Sequence a key-use entry for ``data`` before the key touches it."""
        self._auditor.record(
            [
                key_use_entry(
                    key_id=key_id,
                    purpose=purpose,
                    request_id=self._src.token(),
                    at=self._now(),
                    object_sha256=hashlib.sha256(data).hexdigest(),
                )
            ]
        )

    def _record_replay(
        self,
        verified: VerifiedReceipt,
        *,
        request_id: str,
        replay_runtime: dict[str, Any],
        output_sha256: str,
        verdict: str,
        same_environment: bool,
        detail: str,
        max_abs: float = 0.0,
        max_rel: float = 0.0,
    ) -> dict[str, Any]:
        """Log a replay's verdict under a checkpoint covering it; the reply members naming it,
        with the verdict document that proves it offline."""
        entry = replay_verdict_record(
            verified,
            log_origin=self._auditor.origin,
            attestation=self.attestation.receipt_record,
            replay_runtime=replay_runtime,
            output_sha256=output_sha256,
            verdict=verdict,
            same_environment=same_environment,
            max_abs=max_abs,
            max_rel=max_rel,
            detail=detail,
            request_id=request_id,
            at=self._now(),
        )
        (index,), note, checkpoint = self._auditor.record_covered([entry])
        document = ReplayVerdictDocument(
            entry=entry,
            index=index,
            checkpoint=note,
            inclusion_proof=self._auditor.inclusion_proof(index, checkpoint.size),
        )
        return {"log_index": index, "verdict_document": document.to_bytes().decode("utf-8")}

    def record_published(self, entry: bytes) -> int:
        """Sequence ``entry``, publish a checkpoint covering it and return its index."""
        (index,), _, _ = self._auditor.record_covered([entry])
        return index

    def refresh_trust(self) -> TrustBundle:
        """After a key change: rebuild the trust bundle and sign checkpoints with the new keys."""
        # The witness quorum is not a key: it carries over from the bundle in force.
        witnesses = self.trust.witness_policy
        self.trust = build_trust(self._keys)
        self.pin_witnesses(witnesses)
        self.use_log_signers()
        # Receipts must name evidence that binds the keys now in force.
        self.attestation.start(self.trust.to_bytes())
        return self.trust

    def use_log_signers(self) -> None:
        """Sign checkpoints with the keystore's current checkpoint keys, and publish one now."""
        self._auditor.set_signers(self._keys.log_signers)
        self._auditor.commit()

    def pin_witnesses(self, policy: WitnessPolicy) -> None:
        """Publish ``policy`` in the trust bundle: receipts then need its witness quorum."""
        self.trust = replace(self.trust, witness_policy=policy)
        self._verifier = Verifier(trust=self.trust)

    def log_admin(self, action: str, **details: Any) -> None:
        """Record an administrative event and publish it."""
        self.record_published(admin_entry(action=action, at=self._now(), details=details))

    def _open(
        self,
        blob: bytes,
        *,
        purpose: str,
        request_id: str,
        content_type: str,
        limit: int,
        parsed: SealedArtifact | None = None,
        also: list[bytes] | None = None,
    ) -> bytes:
        artifact = parsed if parsed is not None else parse_sealed(blob, limit=limit)
        check_unwrap(self._keys, artifact.key_id, use=purpose)
        # Committed before the key touches the blob, in one transaction with ``also`` (the
        # public server's access record, which is then emptied: it is logged). Not fsynced on
        # its own: whatever the opening leads to is acknowledged only after a durable commit,
        # which the log writes after this one and which flushes it too.
        key_use = key_use_entry(
            key_id=artifact.key_id,
            purpose=purpose,
            request_id=request_id,
            at=self._now(),
            object_sha256=hashlib.sha256(blob).hexdigest(),
        )
        self._auditor.record([*(also or ()), key_use], durable=False)
        if also:
            also.clear()
        with tracer().start_as_current_span(
            "qward.decrypt",
            attributes={
                "qward.purpose": purpose,
                "qward.request_id": request_id,
                "qward.key_id": artifact.key_id,
                "qward.sealed_bytes": len(blob),
            },
        ):
            return open_sealed(
                blob,
                keys=self._keys.hpke,
                limit=limit,
                expected_content_type=content_type,
                parsed=artifact,
            )

    def _opener(
        self, request_id: str, content_type: str = MODEL_CONTENT_TYPE
    ) -> Callable[[bytes], bytes]:
        return lambda sealed: self._open(
            sealed,
            purpose="unseal-model",
            request_id=request_id,
            content_type=content_type,
            limit=MAX_MODEL_BYTES + 65536,
        )

    # -- operations --------------------------------------------------------------------------

    def op_trust(self, header: dict[str, Any], payload: bytes) -> Reply:
        return {"ok": True}, self.trust.to_bytes()

    def op_attest(self, header: dict[str, Any], payload: bytes) -> Reply:
        nonce_hex = header.get("nonce")
        try:
            nonce = bytes.fromhex(nonce_hex) if isinstance(nonce_hex, str) else b""
        except ValueError:
            nonce = b""
        if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
            raise InputError(f"nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes of hex")
        trust = self.trust.to_bytes()
        evidence, index = self.attestation.collect(trust, nonce, purpose="client-nonce")
        response = AttestationResponse(
            trust=trust,
            evidence=evidence,
            nonce=nonce,
            log_index=index,
            collected_at=self._src.clock(),
        )
        return {"ok": True}, response.to_bytes()

    def op_register_model(self, header: dict[str, Any], payload: bytes) -> Reply:
        name = header.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise InputError("model name must be 1 to 200 characters")
        request_id = self._src.token()
        # An ONNX graph or a circuit spec; the authenticated header says which.
        artifact = parse_sealed(payload, limit=MAX_MODEL_BYTES + 65536)
        content_type = artifact.content_type
        if content_type not in MODEL_CONTENT_TYPES:
            raise InputError(f"sealed artifact holds {content_type!r}, which is not a model type")
        plaintext = self._open(
            payload,
            purpose="unseal-model",
            request_id=request_id,
            content_type=content_type,
            limit=MAX_MODEL_BYTES + 65536,
        )
        digest = hashlib.sha256(plaintext).hexdigest()
        # The sealed header's content type is the client's word: the bytes must agree with it,
        # and an ONNX model must hold all its data inline (issue 10.1), before anything is kept.
        if check_model_bytes(plaintext) != content_type:
            raise InputError(f"the sealed model's bytes are not of its declared {content_type!r}")
        signature = self._model_signature(name, digest, plaintext, artifact.header)
        del plaintext
        known = digest in self._models
        entry = self._models.add(
            model_sha256=digest,
            sealed=payload,
            name=name,
            content_type=content_type,
            chat_template=_optional_text(header.get("chat_template"), "chat_template"),
            signature=signature,
        )
        try:
            worker = self._models.ensure_workers(entry, self._opener(request_id, content_type))
        except QwardError as exc:
            # A model no worker can load is not kept, so it is not retried at every start.
            if not known:
                self._models.remove(entry)
            self.log_admin(
                "model-registration-failed", model_sha256=digest, name=name, reason=str(exc)
            )
            raise
        self.log_admin(
            "model-registered",
            model_sha256=digest,
            name=name,
            sealed_sha256=entry.sealed_sha256,
            **signature_member(signature),
        )
        info = worker.info
        return {
            "ok": True,
            "model_sha256": digest,
            "name": name,
            "inputs": info["inputs"],
            "outputs": info["outputs"],
            "isolation": info["isolation"],
        }, b""

    def _model_signature(
        self, name: str, digest: str, plaintext: bytes, header: bytes
    ) -> dict[str, str] | None:
        # Fail closed: a refused signature is logged and nothing is stored.
        try:
            return registration_signature(plaintext, header, self._models.directory.parent)
        except QwardError as exc:
            self.log_admin(
                "model-registration-failed", model_sha256=digest, name=name, reason=str(exc)
            )
            raise

    def _execute(
        self,
        entry: ModelEntry,
        sealed_input: bytes,
        *,
        seed: int,
        request_id: str,
        purpose: str,
        access: list[bytes] | None = None,
    ) -> tuple[Any, tuple[Tensor, ...], tuple[Tensor, ...], dict[str, Any]]:
        # Plain tensors, or a client's salt followed by them; the sealed header says which.
        artifact = parse_sealed(sealed_input, limit=MAX_INPUT_BYTES)
        content_type = artifact.content_type
        if content_type not in _INPUT_TYPES:
            raise InputError(f"sealed input holds {content_type!r}, not input tensors")
        plaintext = self._open(
            sealed_input,
            purpose=purpose,
            request_id=request_id,
            content_type=content_type,
            limit=MAX_INPUT_BYTES,
            parsed=artifact,
            also=access,
        )
        salt = None
        if content_type == SALTED_INPUT_CONTENT_TYPE:
            salt, plaintext = split_salted(plaintext)
        inputs = decode_tensors(plaintext)
        span: dict[str, str | int] = {
            "qward.model_sha256": entry.model_sha256,
            "qward.request_id": request_id,
            "qward.seed": seed,
        }
        with (
            self._models.borrow(entry, self._opener(request_id, entry.content_type)) as worker,
            tracer().start_as_current_span("qward.run", attributes=span),
        ):
            outputs, record = worker.run_recorded(inputs, seed=seed)
        # The salt never leaves the core: only the commitment it makes goes into the receipt.
        return worker, inputs, outputs, {**record, "input": input_section(inputs, salt)}

    def op_run(self, header: dict[str, Any], payload: bytes) -> Reply:
        access = self._folded_access(header)
        try:
            entry = self._entry(header)
            parameters = self._logged_parameters(_parameters(header.get("parameters", {})))
            seed = _seed(header.get("seed"))
            request_id = self._src.token()
            worker, inputs, outputs, record = self._execute(
                entry,
                payload,
                seed=seed,
                request_id=request_id,
                purpose="unseal-input",
                access=access,
            )
        except QwardError as exc:
            # A folded access record is logged whatever became of the run (once: ``_open``
            # empties the list when it logs it with the key use).
            if access and not isinstance(exc, AuditError):
                self._auditor.record(access, durable=False)
            raise
        # The model has run: its receipt comes next, so a checkpoint signed meanwhile waits for
        # it (briefly), and concurrent runs share one signature. Announcing any earlier would
        # hold checkpoints for runs still in a slow model.
        ticket = self._auditor.expect_publish()
        try:
            body = self._receipt_body(
                entry,
                worker.info,
                inputs,
                outputs,
                seed=seed,
                parameters=parameters,
                request_id=request_id,
                record=record,
            )
            return self._issue(body, request_id, ticket), encode_tensors(outputs)
        finally:
            ticket.release()

    def _issue(
        self, body: dict[str, Any], request_id: str, ticket: PublishTicket | None = None
    ) -> dict[str, Any]:
        """Sign ``body`` (per-receipt signing only), log it and publish a checkpoint covering it,
        in one durable batch: the reply naming the receipt."""
        signature = None
        if self._receipt_signing is ReceiptSigning.PER_RECEIPT:
            with tracer().start_as_current_span(
                "qward.sign",
                attributes={
                    "qward.suite": self._keys.receipt_signer.public_key.suite,
                    "qward.key_id": self._keys.receipt_signer.key_id,
                    "qward.request_id": request_id,
                },
            ):
                signature = self._keys.receipt_signer.sign(
                    canonical_json(body), context=SIGNING_CONTEXT
                )
        (index,), note, checkpoint = self._auditor.record_covered(
            [receipt_entry(body, signature)], ticket=ticket
        )
        bundle = ReceiptBundle(
            body=body,
            signature=signature,
            index=index,
            checkpoint=note,
            inclusion_proof=self._auditor.inclusion_proof(index, checkpoint.size),
        )
        return {
            "ok": True,
            "receipt": bundle.to_bytes().decode("utf-8"),
            "receipt_id": bundle.receipt_id,
            "log_index": index,
        }

    def op_generate(
        self,
        header: dict[str, Any],
        payload: bytes,
        emit: Callable[[dict[str, Any]], None] | None = None,
    ) -> Reply:
        """Generate text with a GGUF model on a sealed request. With ``emit`` (a streaming
        caller), each token is relayed as it is sampled; the receipt comes in the last frame.
        A generation the caller stops listening to still runs to its end and is receipted."""
        entry = self._entry(header)
        if entry.content_type != GGUF_CONTENT_TYPE:
            raise InputError(f"model {entry.name!r} is not a language model")
        seed = _seed(header.get("seed"))
        request_id = self._src.token()
        request, request_sha256 = self._open_request(payload, "unseal-input", request_id)
        relay = None if emit is None else _token_relay(emit)
        with (
            self._models.borrow(entry, self._opener(request_id, entry.content_type)) as worker,
            tracer().start_as_current_span("qward.generate", attributes={"qward.seed": seed}),
        ):
            record = worker.generate(request, seed=seed, on_token=relay)
        body = generation_receipt_body(
            entry,
            worker.info,
            record,
            request_sha256=request_sha256,
            base=self._receipt_common(request_id),
        )
        return self._issue(body, request_id), canonical_json(record)

    def op_replay_generation(self, header: dict[str, Any], payload: bytes) -> Reply:
        """Regenerate a receipted generation from its sealed request and seed, and compare token
        ids exactly: the verdict is bitwise-identical or a mismatch naming the first divergent
        token (given the original ids in ``original_token_ids``). The verdict is logged."""
        verified = verified_receipt(header, self._verifier)
        body = verified.body
        if "generation" not in body["runtime"]:
            raise InputError("the receipt is not for a text generation; use replay")
        entry = self._models.get(str(body["model"]["sha256"]))
        request_id = self._src.token()
        request, request_sha256 = self._open_request(payload, "unseal-replay-input", request_id)
        if request_sha256 != body["input"]["sha256"]:
            raise InputError("replay request differs from the request the receipt records")
        with self._models.borrow(entry, self._opener(request_id, entry.content_type)) as worker:
            record = worker.generate(request, seed=_seed(body["seed"]))
        verdict, detail = judge_generation(body, record, header.get("original_token_ids"))
        digest = output_sha256(record["token_ids"], record["text"])
        runtime = {
            "platform_class": worker.info["platform_class"],
            "libraries": worker.info["libraries"],
        }
        logged = self._record_replay(
            verified,
            request_id=request_id,
            replay_runtime=runtime,
            output_sha256=digest,
            verdict=verdict,
            # Token ids compare exactly on any platform; the flag still says where it ran.
            same_environment=same_environment(body["runtime"], runtime),
            detail=detail,
        )
        return {
            "ok": True,
            "verdict": verdict,
            "detail": detail,
            "output_sha256": digest,
            "expected_sha256": body["output"]["sha256"],
            **logged,
        }, canonical_json(record)

    def _open_request(
        self, sealed: bytes, purpose: str, request_id: str
    ) -> tuple[dict[str, Any], str]:
        """A sealed generation request, opened (key use logged first), and its SHA-256."""
        plaintext = self._open(
            sealed,
            purpose=purpose,
            request_id=request_id,
            content_type=GENERATION_REQUEST_CONTENT_TYPE,
            limit=MAX_GENERATION_REQUEST_BYTES,
        )
        request = parse_canonical_json(plaintext, what="generation request")
        return request, hashlib.sha256(plaintext).hexdigest()

    def _entry(self, header: dict[str, Any]) -> ModelEntry:
        # By digest, or by name (resolved here, in one step with the run, for V2 clients).
        if "model_name" in header:
            return self._models.by_name(str(header["model_name"]))
        return self._models.get(str(header.get("model_sha256")))

    def _receipt_common(self, request_id: str) -> dict[str, Any]:
        """The receipt members every kind of run shares."""
        per_receipt = self._receipt_signing is ReceiptSigning.PER_RECEIPT
        signer = self._keys.receipt_signer
        return {
            "format": RECEIPT_FORMAT if per_receipt else CHECKPOINT_RECEIPT_FORMAT,
            "receipt_id": request_id,
            "issued_at": self._now(),
            "attestation": self.attestation.receipt_record,
            "key_uses": [
                {"key_id": self._keys.hpke_public.key_id, "purpose": "unseal-input"},
                *([{"key_id": signer.key_id, "purpose": "sign-receipt"}] if per_receipt else []),
            ],
            "log": {"origin": self._auditor.origin},
            "signer": {"suite": signer.public_key.suite, "key_id": signer.key_id}
            if per_receipt
            else dict(CHECKPOINT_SIGNER),
        }

    def _receipt_body(
        self,
        entry: ModelEntry,
        info: dict[str, Any],
        inputs: tuple[Tensor, ...],
        outputs: tuple[Tensor, ...],
        *,
        seed: int,
        parameters: dict[str, Any],
        request_id: str,
        record: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            **self._receipt_common(request_id),
            "model": {
                "sha256": entry.model_sha256,
                "sealed_sha256": entry.sealed_sha256,
                "name": entry.name,
            },
            **signature_member(entry.signature),
            "input": record["input"],
            "output": {"sha256": tensors_digest(outputs)},
            "parameters": parameters,
            "seed": seed,
            "runtime": {
                "engine": info.get("engine", "onnxruntime"),
                "session_options": info["session_options"],
                "libraries": info["libraries"],
                "platform_class": info["platform_class"],
                "qward": __version__,
                # A circuit run binds its compiled circuit, shots and device seed.
                **({"circuit": record["circuit"]} if "circuit" in record else {}),
            },
            "isolation": info["isolation"],
        }

    def op_replay(self, header: dict[str, Any], payload: bytes) -> Reply:
        verified = verified_receipt(header, self._verifier)
        body = verified.body
        entry = self._models.get(str(body["model"]["sha256"]))
        request_id = self._src.token()
        worker, _, outputs, record = self._execute(
            entry,
            payload,
            seed=_seed(body["seed"]),
            request_id=request_id,
            purpose="unseal-replay-input",
        )
        if record["input"] != body["input"]:
            raise InputError("replay input differs from the input the receipt records")
        entry_info = worker.info
        digest, expected = tensors_digest(outputs), body["output"]["sha256"]
        original = header.get("original_outputs")
        replay_runtime = {
            "platform_class": entry_info["platform_class"],
            "libraries": entry_info["libraries"],
            **({"circuit": record["circuit"]} if "circuit" in record else {}),
        }
        judged = judge(
            body=body,
            replay_runtime=replay_runtime,
            replay_outputs=outputs,
            original_outputs=decode_tensors(b64decode(original, what="original outputs"))
            if original is not None
            else None,
        )
        logged = self._record_replay(
            verified,
            request_id=request_id,
            replay_runtime=replay_runtime,
            output_sha256=digest,
            verdict=judged.verdict,
            same_environment=judged.same_environment,
            detail=judged.detail,
            max_abs=judged.max_abs,
            max_rel=judged.max_rel,
        )
        return {
            "ok": True,
            "verdict": judged.verdict,
            "same_environment": judged.same_environment,
            "detail": judged.detail,
            "output_sha256": digest,
            "expected_sha256": expected,
            **logged,
        }, encode_tensors(outputs)

    def op_unload_model(self, header: dict[str, Any], payload: bytes) -> Reply:
        entry = self._models.get(str(header.get("model_sha256")))
        if header.get("reload") is True:
            # Undo an unload from the sealed copy the core kept (no model repository needed).
            with entry.lock:
                entry.unloaded = False
            self._models.ensure_workers(entry, self._opener(self._src.token(), entry.content_type))
            self.log_admin("model-loaded", model_sha256=entry.model_sha256, name=entry.name)
            return {"ok": True}, b""
        self._models.unload(entry)
        self.log_admin("model-unloaded", model_sha256=entry.model_sha256, name=entry.name)
        return {"ok": True}, b""

    def op_record_access(self, header: dict[str, Any], payload: bytes) -> Reply:
        entry = self._access_entry(header)
        if "count" in header:
            entry = _aggregate_access(entry, header)
        # A record of a decision, not an acknowledgement of one: the next durable commit (a
        # receipt's, or the backstop checkpoint's within a second) makes it power-loss durable.
        self._auditor.record([entry], durable=False)
        return {"ok": True}, b""

    def _access_entry(self, fields: dict[str, Any]) -> bytes:
        token_id, role = fields.get("token_id"), fields.get("role")
        method, path, decision = fields.get("method"), fields.get("path"), fields.get("decision")
        if not all(isinstance(v, str) for v in (method, path, decision)) or not all(
            v is None or isinstance(v, str) for v in (token_id, role)
        ):
            raise InputError("access record fields must be strings")
        return access_entry(
            token_id=self._personal.seal_caller(token_id) if self._personal else token_id,
            role=role,
            method=str(method),
            path=str(path),
            decision=str(decision),
            at=self._now(),
        )

    def _logged_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Parameters as the receipt records them: personal values sealed (when declared)."""
        return self._personal.seal_parameters(parameters) if self._personal else parameters

    def op_erase_subject(self, header: dict[str, Any], payload: bytes) -> Reply:
        """Crypto-shred a data subject: the erasure is logged first, then the key is deleted."""
        return erase_subject(self._personal, header, log=self.record_published, now=self._now())

    def op_reveal_fields(self, header: dict[str, Any], payload: bytes) -> Reply:
        """Open sealed log fields for an administrator: plaintext, or "[erased]"."""
        return reveal_fields(self._personal, header)

    def _folded_access(self, header: dict[str, Any]) -> list[bytes]:
        """The public server's access record for this run, when it sent it with the run (one
        round trip): logged in the same transaction as the input's key use, before it opens."""
        access = header.get("access")
        if access is None:
            return []
        if not isinstance(access, dict):
            raise InputError("a run's access record must be an object")
        return [self._access_entry(access)]

    def op_record_admin(self, header: dict[str, Any], payload: bytes) -> Reply:
        action, details = header.get("action"), header.get("details")
        if action not in _PUBLIC_ADMIN_ACTIONS or not isinstance(details, dict):
            raise InputError(f"admin action {action!r} cannot be recorded from the public side")
        self.log_admin(str(action), **details)
        return {"ok": True}, b""

    def op_models(self, header: dict[str, Any], payload: bytes) -> Reply:
        models = []
        for entry in self._models.entries():
            worker = entry.worker
            models.append(
                {
                    "name": entry.name,
                    "model_sha256": entry.model_sha256,
                    "content_type": entry.content_type,
                    "ready": worker is not None and worker.alive and not entry.unloaded,
                    "inputs": worker.info["inputs"] if worker else [],
                    "outputs": worker.info["outputs"] if worker else [],
                }
            )
        return {"ok": True, "models": models}, b""

    def op_checkpoint(self, header: dict[str, Any], payload: bytes) -> Reply:
        return {"ok": True}, self._auditor.latest_checkpoint()

    def op_tile(self, header: dict[str, Any], payload: bytes) -> Reply:
        return {"ok": True}, self._auditor.tile(str(header.get("path")))

    def op_inclusion_proof(self, header: dict[str, Any], payload: bytes) -> Reply:
        proof = self._auditor.inclusion_proof(_int(header, "index"), _int(header, "size"))
        return {"ok": True, "proof": [b64encode(h) for h in proof]}, b""

    def op_consistency_proof(self, header: dict[str, Any], payload: bytes) -> Reply:
        proof = self._auditor.consistency_proof(_int(header, "old_size"), _int(header, "new_size"))
        return {"ok": True, "proof": [b64encode(h) for h in proof]}, b""

    def dispatch(
        self,
        header: dict[str, Any],
        payload: bytes,
        emit: Callable[[dict[str, Any]], None] | None = None,
    ) -> Reply:
        """Route one request to its operation; ``emit`` sends interim frames to a caller that
        asked for a stream (``{"op": "generate", "stream": true}``)."""
        op = str(header.get("op"))
        if op == "generate" and header.get("stream") is True and emit is not None:
            with tracer().start_as_current_span("qward.core.generate"):
                return self.op_generate(header, payload, emit)
        handler = _OPS.get(op) or KEY_ADMIN_OPS.get(op)
        if handler is None:
            raise InputError(f"unknown core operation {header.get('op')!r}")
        with tracer().start_as_current_span(f"qward.core.{header['op']}"):
            return handler(self, header, payload)

    def on_close(self, stop: Callable[[], None]) -> None:
        """Run ``stop`` first when the core closes (a background task such as the anchorer)."""
        self._closers.append(stop)

    def close(self) -> None:
        """Stop background tasks and workers, record the stop, and drain the log's sequencer."""
        for stop in self._closers:
            stop()
        self._models.close()
        self.log_admin("core-stop", pid=os.getpid())
        self._auditor.close()


def _seed(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_SEED:
        raise InputError(f"seed must be an integer from 0 to {_MAX_SEED}")
    return value


def _parameters(value: object) -> dict[str, Any]:
    """Request parameters go into the signed receipt, so they must have one canonical encoding."""
    if not isinstance(value, dict):
        raise InputError("parameters must be an object")
    if len(canonical_json(value)) > _MAX_PARAMETERS_BYTES:
        raise InputError(f"parameters are over the {_MAX_PARAMETERS_BYTES} byte limit")
    return value


_HEX64 = frozenset("0123456789abcdef")


def _aggregate_access(entry: bytes, header: dict[str, Any]) -> bytes:
    """An access record standing for ``count`` refused calls from one source (issue 10.6): the
    public server aggregates refusals so that a flood of them cannot flood the log."""
    count, digest = header.get("count"), header.get("digest")
    first_at, last_at = header.get("first_at"), header.get("last_at")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 2**40:
        raise InputError("access record count must be a positive integer")
    if not all(isinstance(t, str) and 0 < len(t) <= 40 for t in (first_at, last_at)):
        raise InputError("access record first_at and last_at must be timestamps")
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX64:
        raise InputError("access record digest must be a SHA-256 in lowercase hex")
    if not str(header.get("decision")).startswith("deny-"):
        raise InputError("only refused calls are aggregated")
    record = json.loads(entry)
    record.update(count=count, first_at=first_at, last_at=last_at, digest=digest)
    return canonical_json(record)


def _optional_text(value: object, key: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InputError(f"{key} must be a string")
    return value


def _token_relay(emit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Pass worker token frames on to the caller; once the caller is gone, drop them (the
    generation still completes, and its receipt is logged)."""
    gone: list[bool] = []

    def relay(frame: dict[str, Any]) -> None:
        if gone:
            return
        try:
            emit({k: frame[k] for k in ("ok", "event", "index", "token_id", "text")})
        except OSError:
            gone.append(True)

    return relay


def _int(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"{key} must be a non-negative integer")
    return value


_OPS: dict[str, Callable[[CoreService, dict[str, Any], bytes], Reply]] = {
    "trust": CoreService.op_trust,
    "attest": CoreService.op_attest,
    "register_model": CoreService.op_register_model,
    "run": CoreService.op_run,
    "generate": CoreService.op_generate,
    "replay_generation": CoreService.op_replay_generation,
    "replay": CoreService.op_replay,
    "erase_subject": CoreService.op_erase_subject,
    "reveal_fields": CoreService.op_reveal_fields,
    "checkpoint": CoreService.op_checkpoint,
    "models": CoreService.op_models,
    "unload_model": CoreService.op_unload_model,
    "record_access": CoreService.op_record_access,
    "record_admin": CoreService.op_record_admin,
    "tile": CoreService.op_tile,
    "inclusion_proof": CoreService.op_inclusion_proof,
    "consistency_proof": CoreService.op_consistency_proof,
}
