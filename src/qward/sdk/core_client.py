"""Sync and async clients of the protected core's Unix socket (``CoreInterface``).

Requests are ``{"op": ...}`` headers with an optional binary payload; replies are
``{"ok": true, ...}`` or ``{"ok": false, "code", "message"}``, and an error code maps back to the
same ``QwardError`` subclass the core raised. Nothing here ever carries a private key, and only
sealed models and inputs travel toward the core.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qward.core_api import (
    MAX_FRAME_PAYLOAD,
    AccessRecord,
    GenerationReplay,
    GenerationResult,
    ModelInfo,
    ReplayResult,
    RunResult,
    TokenChunk,
    error_from_reply,
)
from qward.encoding import b64decode, b64encode, parse_canonical_json
from qward.errors import CoreUnavailableError, InputError
from qward.framing import MAX_HEADER_BYTES, encode_frame, read_frame_async, recv_frame
from qward.receipts.trust import TrustBundle
from qward.tensors import Tensor, decode_tensors, encode_tensors

__all__ = ["AccessAggregate", "AsyncCoreClient", "CoreClient"]


def _model_info(header: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        model_sha256=header["model_sha256"],
        name=header["name"],
        inputs=header["inputs"],
        outputs=header["outputs"],
        isolation=header["isolation"],
    )


def _hashes(values: Any) -> tuple[bytes, ...]:
    return tuple(b64decode(v, what="proof hash") for v in values)


def _run_header(
    model: str,
    *,
    seed: int,
    parameters: dict[str, Any],
    by_name: bool,
    access: AccessRecord | None = None,
) -> dict[str, Any]:
    key = "model_name" if by_name else "model_sha256"
    header = {"op": "run", key: model, "seed": seed, "parameters": parameters}
    if access is not None:
        header["access"] = access.to_header()
    return header


def _generate_header(model: str, *, seed: int, by_name: bool, stream: bool) -> dict[str, Any]:
    key = "model_name" if by_name else "model_sha256"
    return {"op": "generate", key: model, "seed": seed, "stream": stream}


def _generation_result(reply: dict[str, Any], body: bytes) -> GenerationResult:
    return GenerationResult(
        record=parse_canonical_json(body, what="generation record"),
        receipt=reply["receipt"].encode("utf-8"),
        receipt_id=reply["receipt_id"],
        log_index=reply["log_index"],
    )


def _stream_item(reply: dict[str, Any], body: bytes) -> TokenChunk | GenerationResult:
    """An interim token frame, or (the last frame) the result; a reported error is raised."""
    if not reply.get("ok"):
        raise error_from_reply(reply)
    if reply.get("event") == "token":
        return TokenChunk(
            index=int(reply["index"]), token_id=int(reply["token_id"]), text=str(reply["text"])
        )
    return _generation_result(reply, body)


def _run_result(reply: dict[str, Any], body: bytes) -> RunResult:
    return RunResult(
        outputs=decode_tensors(body),
        receipt=reply["receipt"].encode("utf-8"),
        receipt_id=reply["receipt_id"],
        log_index=reply["log_index"],
    )


@dataclass(frozen=True, kw_only=True)
class AccessAggregate:
    """Refused calls from one source in one interval, logged as one access record."""

    count: int
    first_at: str
    last_at: str
    digest: str


def _frame(header: dict[str, Any], payload: bytes) -> bytes:
    """The request frame, refused here when its header is over the core's limit: that is the
    caller's input being too large (``InputError``), not the core being unavailable."""
    frame = encode_frame(header, payload)
    head_len = int.from_bytes(frame[:4], "big")
    if head_len > MAX_HEADER_BYTES:
        raise InputError(
            f"request header of {head_len} bytes is over the core's {MAX_HEADER_BYTES} byte limit"
        )
    return frame


def _access_header(
    token_id: str | None, role: str | None, method: str, path: str, decision: str
) -> dict[str, Any]:
    return {
        "op": "record_access",
        "token_id": token_id,
        "role": role,
        "method": method,
        "path": path,
        "decision": decision,
    }


class CoreClient:
    """``CoreInterface`` over the core's Unix socket.

    Connections are pooled: concurrent callers (the HTTP server's threads) each borrow one, so
    requests for different models run in parallel in the core; each connection carries one
    request at a time.
    """

    def __init__(self, socket_path: Path, *, timeout: float = 120.0) -> None:
        self._path = socket_path
        self._timeout = timeout
        self._lock = threading.Lock()
        self._idle: list[socket.socket] = []

    def _connect(self) -> socket.socket:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(str(self._path))
        except OSError as exc:
            sock.close()
            raise CoreUnavailableError(
                f"cannot reach the protected core at {self._path}: {exc.strerror}"
            ) from None
        return sock

    def call(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """Send one request and return the reply; a reported error is raised."""
        frame = _frame(header, payload)
        sock = self._connect()
        try:
            sock.sendall(frame)
            reply, body = recv_frame(sock, max_payload=MAX_FRAME_PAYLOAD)
        except (OSError, EOFError) as exc:
            sock.close()
            # The pooled connections were to the same core; if it went away they are all dead,
            # so drop them and let the next call connect afresh (to a restarted core).
            self.close()
            raise CoreUnavailableError(f"the protected core connection failed: {exc}") from None
        with self._lock:
            self._idle.append(sock)
        if not reply.get("ok"):
            raise error_from_reply(reply)
        return reply, body

    def close(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def __enter__(self) -> CoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def trust(self) -> TrustBundle:
        """The core's public keys."""
        _, body = self.call({"op": "trust"})
        return TrustBundle.from_bytes(body)

    def attest(self, nonce: bytes) -> bytes:
        """Fresh evidence binding the core's trust bundle and ``nonce``: an
        ``AttestationResponse``'s canonical bytes."""
        _, body = self.call({"op": "attest", "nonce": nonce.hex()})
        return body

    def generate(
        self, model: str, sealed_request: bytes, *, seed: int, by_name: bool = False
    ) -> GenerationResult:
        """Generate text with a GGUF model on a sealed ``GENERATION_REQUEST_CONTENT_TYPE``
        request; returns the generation record and its receipt."""
        header = _generate_header(model, seed=seed, by_name=by_name, stream=False)
        return _generation_result(*self.call(header, sealed_request))

    def generate_stream(
        self, model: str, sealed_request: bytes, *, seed: int, by_name: bool = False
    ) -> Iterator[TokenChunk | GenerationResult]:
        """``generate``, yielding each token as the worker samples it and the result last.
        Closing the iterator early drops the connection; the core still finishes and receipts
        the generation."""
        header = _generate_header(model, seed=seed, by_name=by_name, stream=True)
        sock = self._connect()
        done = False
        try:
            sock.sendall(_frame(header, sealed_request))
            while not done:
                item = _stream_item(*recv_frame(sock, max_payload=MAX_FRAME_PAYLOAD))
                done = isinstance(item, GenerationResult)
                yield item
        except (OSError, EOFError) as exc:
            raise CoreUnavailableError(f"the protected core connection failed: {exc}") from None
        finally:
            if done:
                with self._lock:
                    self._idle.append(sock)
            else:
                sock.close()

    def register_model(
        self, sealed_model: bytes, *, name: str, chat_template: str | None = None
    ) -> ModelInfo:
        """Hand the core a sealed model; it opens it and starts a sandboxed worker. A GGUF
        model that carries no chat template may be given one (Jinja text, not secret)."""
        header: dict[str, Any] = {"op": "register_model", "name": name}
        if chat_template is not None:
            header["chat_template"] = chat_template
        reply, _ = self.call(header, sealed_model)
        return _model_info(reply)

    def run(
        self,
        model_sha256: str,
        sealed_input: bytes,
        *,
        seed: int,
        parameters: dict[str, Any],
        by_name: bool = False,
        access: AccessRecord | None = None,
    ) -> RunResult:
        """Run a registered model on a sealed input; returns outputs and a logged receipt.

        With ``by_name``, ``model_sha256`` is a model name the core resolves. ``access`` is the
        caller's access record, logged with the run's key use (one round trip instead of two).
        """
        header = _run_header(
            model_sha256, seed=seed, parameters=parameters, by_name=by_name, access=access
        )
        return _run_result(*self.call(header, sealed_input))

    def replay(
        self,
        receipt: bytes,
        sealed_input: bytes,
        original_outputs: tuple[Tensor, ...] | None = None,
        issuer_trust: bytes | None = None,
    ) -> ReplayResult:
        """Re-run the receipt's model on the same input and seed. On another platform or
        environment, ``original_outputs`` allow a tolerance verdict instead of a bitwise one.
        A receipt from another log comes with that log's trust bundle, ``issuer_trust``."""
        header = _replay_header("replay", receipt, issuer_trust)
        if original_outputs is not None:
            header["original_outputs"] = b64encode(encode_tensors(original_outputs))
        reply, body = self.call(header, sealed_input)
        return ReplayResult(
            verdict=reply["verdict"],
            output_sha256=reply["output_sha256"],
            expected_sha256=reply["expected_sha256"],
            outputs=decode_tensors(body),
            same_environment=reply["same_environment"],
            detail=reply["detail"],
            log_index=reply["log_index"],
            verdict_document=reply["verdict_document"].encode("utf-8"),
        )

    def replay_generation(
        self,
        receipt: bytes,
        sealed_request: bytes,
        original_token_ids: list[int] | None = None,
        issuer_trust: bytes | None = None,
    ) -> GenerationReplay:
        """Regenerate a receipted generation from its sealed request and compare token ids."""
        header = _replay_header("replay_generation", receipt, issuer_trust)
        if original_token_ids is not None:
            header["original_token_ids"] = list(original_token_ids)
        reply, body = self.call(header, sealed_request)
        return GenerationReplay(
            verdict=reply["verdict"],
            detail=reply["detail"],
            output_sha256=reply["output_sha256"],
            expected_sha256=reply["expected_sha256"],
            record=parse_canonical_json(body, what="generation record"),
            log_index=reply["log_index"],
            verdict_document=reply["verdict_document"].encode("utf-8"),
        )

    def erase_subject(self, subject: str) -> tuple[str, int]:
        """Crypto-shred a data subject (admin): its key id and the erasure entry's log index."""
        reply, _ = self.call({"op": "erase_subject", "subject": subject})
        return str(reply["subject_key_id"]), int(reply["log_index"])

    def reveal_fields(self, fields: list[dict[str, Any]]) -> list[Any]:
        """Open sealed log fields (admin): each ``{"value", "context"}`` -> plaintext or
        "[erased]"."""
        reply, _ = self.call({"op": "reveal_fields", "fields": fields})
        return list(reply["values"])

    def models(self) -> list[dict[str, Any]]:
        """Registered models: name, digest, readiness and tensor metadata."""
        reply, _ = self.call({"op": "models"})
        return list(reply["models"])

    def unload_model(self, model_sha256: str, *, reload: bool = False) -> None:
        """Stop a model's worker; it stays registered but refuses runs until loaded again.

        With ``reload`` the unload is undone: the core starts the model's workers again from the
        sealed copy it kept, so no model repository is needed.
        """
        header: dict[str, Any] = {"op": "unload_model", "model_sha256": model_sha256}
        if reload:
            header["reload"] = True
        self.call(header)

    def record_access(
        self, *, token_id: str | None, role: str | None, method: str, path: str, decision: str
    ) -> None:
        """Log a public API call and its access decision (raises if the log refuses it)."""
        self.call(_access_header(token_id, role, method, path, decision))

    def record_admin(self, action: str, **details: Any) -> None:
        """Log an administrative action taken by a public tool (e.g. creating a token)."""
        self.call({"op": "record_admin", "action": action, "details": details})

    def checkpoint(self) -> bytes:
        """The latest signed checkpoint."""
        _, body = self.call({"op": "checkpoint"})
        return body

    def tile(self, path: str) -> bytes:
        """A C2SP tlog-tiles resource (``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/...``)."""
        _, body = self.call({"op": "tile", "path": path})
        return body

    def inclusion_proof(self, index: int, size: int) -> tuple[bytes, ...]:
        """Inclusion proof of entry ``index`` in the tree of ``size`` entries."""
        reply, _ = self.call({"op": "inclusion_proof", "index": index, "size": size})
        return _hashes(reply["proof"])

    def consistency_proof(self, old_size: int, new_size: int) -> tuple[bytes, ...]:
        """Consistency proof between two tree sizes."""
        reply, _ = self.call(
            {"op": "consistency_proof", "old_size": old_size, "new_size": new_size}
        )
        return _hashes(reply["proof"])


class AsyncCoreClient:
    """The calls the public server makes on every request, without a thread per call.

    Same wire protocol as ``CoreClient``, over asyncio Unix-socket streams pooled per event loop:
    an inference or an access record awaits the core instead of occupying a worker thread.
    """

    def __init__(self, socket_path: Path, *, timeout: float = 120.0) -> None:
        self._path = socket_path
        self._timeout = timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Streams belong to the loop that opened them; a new loop starts a new pool.
            self._loop, self._idle = loop, []
        if self._idle:
            return self._idle.pop()
        try:
            return await asyncio.open_unix_connection(str(self._path))
        except OSError as exc:
            raise CoreUnavailableError(
                f"cannot reach the protected core at {self._path}: {exc.strerror}"
            ) from None

    async def call(
        self, header: dict[str, Any], payload: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        """Send one request and await the reply; a reported error is raised."""
        frame = _frame(header, payload)
        reader, writer = await self._connect()
        try:
            writer.write(frame)
            await writer.drain()
            reply, body = await asyncio.wait_for(
                read_frame_async(reader, max_payload=MAX_FRAME_PAYLOAD), self._timeout
            )
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as exc:
            writer.close()
            self.close()  # the other pooled streams went to the same, likely gone, core
            raise CoreUnavailableError(
                f"the protected core connection failed: {type(exc).__name__}"
            ) from None
        except BaseException:
            writer.close()  # a cancelled call leaves the stream mid-frame: never reuse it
            raise
        self._idle.append((reader, writer))
        if not reply.get("ok"):
            raise error_from_reply(reply)
        return reply, body

    async def run(
        self,
        model: str,
        sealed_input: bytes,
        *,
        seed: int,
        parameters: dict[str, Any],
        by_name: bool = False,
        access: AccessRecord | None = None,
    ) -> RunResult:
        """``CoreClient.run``, awaited."""
        header = _run_header(
            model, seed=seed, parameters=parameters, by_name=by_name, access=access
        )
        return _run_result(*await self.call(header, sealed_input))

    async def generate(
        self, model: str, sealed_request: bytes, *, seed: int, by_name: bool = False
    ) -> GenerationResult:
        """``CoreClient.generate``, awaited."""
        header = _generate_header(model, seed=seed, by_name=by_name, stream=False)
        return _generation_result(*await self.call(header, sealed_request))

    async def generate_stream(
        self, model: str, sealed_request: bytes, *, seed: int, by_name: bool = False
    ) -> AsyncIterator[TokenChunk | GenerationResult]:
        """``CoreClient.generate_stream``, awaited frame by frame."""
        header = _generate_header(model, seed=seed, by_name=by_name, stream=True)
        reader, writer = await self._connect()
        done = False
        try:
            writer.write(_frame(header, sealed_request))
            await writer.drain()
            while not done:
                frame = await asyncio.wait_for(
                    read_frame_async(reader, max_payload=MAX_FRAME_PAYLOAD), self._timeout
                )
                item = _stream_item(*frame)
                done = isinstance(item, GenerationResult)
                yield item
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise CoreUnavailableError(
                f"the protected core connection failed: {type(exc).__name__}"
            ) from None
        finally:
            if done:
                self._idle.append((reader, writer))
            else:
                writer.close()  # mid-stream: never reuse

    async def record_access(
        self,
        *,
        token_id: str | None,
        role: str | None,
        method: str,
        path: str,
        decision: str,
        aggregate: AccessAggregate | None = None,
    ) -> None:
        """``CoreClient.record_access``, awaited; ``aggregate`` makes it one record of many
        refused calls from one source (their count, first and last time, and a digest)."""
        header = _access_header(token_id, role, method, path, decision)
        if aggregate is not None:
            header.update(
                count=aggregate.count,
                first_at=aggregate.first_at,
                last_at=aggregate.last_at,
                digest=aggregate.digest,
            )
        await self.call(header)

    def close(self) -> None:
        """Close every pooled stream."""
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()


def _replay_header(op: str, receipt: bytes, issuer_trust: bytes | None) -> dict[str, Any]:
    header: dict[str, Any] = {"op": op, "receipt": receipt.decode("utf-8")}
    if issuer_trust is not None:
        header["issuer_trust"] = issuer_trust.decode("utf-8")
    return header
