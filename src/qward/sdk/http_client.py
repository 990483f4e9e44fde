"""HTTP SDK for a remote ``qward serve``, sync and async, verifying every receipt it receives.

Inputs go out as V2 binary tensors; the response's receipt is verified offline against the pinned
trust bundle, and its model, input and output digests are checked against what was asked and what
came back, before any output is handed to the caller.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from qward.errors import (
    CoreUnavailableError,
    InputError,
    NotFoundError,
    VerificationError,
)
from qward.receipts.commitment import check_input
from qward.receipts.trust import TrustBundle
from qward.receipts.verify import VerifiedReceipt, Verifier
from qward.sdk.attested_trust import require_attested
from qward.sdk.client import seal_model
from qward.tensors import Tensor, tensors_digest

__all__ = ["AsyncHTTPClient", "HTTPClient", "VerifiedInference"]

_UPLOAD_CHUNK = 256 * 1024


@dataclass(frozen=True, kw_only=True)
class VerifiedInference:
    """Outputs whose receipt verified and whose digests match the request and the response."""

    outputs: tuple[Tensor, ...]
    receipt: bytes
    verified: VerifiedReceipt


def _infer_request(
    inputs: Sequence[Tensor], seed: int, parameters: dict[str, Any] | None
) -> tuple[bytes, dict[str, str]]:
    doc = {
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": list(t.shape),
                "parameters": {"binary_data_size": len(t.data)},
            }
            for t in inputs
        ],
        "parameters": {**(parameters or {}), "seed": seed, "binary_data_output": True},
    }
    head = json.dumps(doc).encode()
    return head + b"".join(t.data for t in inputs), {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def _auth_headers(token: str) -> dict[str, str]:
    if not token or token != token.strip() or any(c.isspace() for c in token):
        raise InputError(
            "a bearer token is needed (QWARD_TOKEN, from `qward token create` on the server)"
        )
    return {"Authorization": f"Bearer {token}"}


def _unreachable(request: httpx.Request, exc: httpx.TransportError) -> CoreUnavailableError:
    return CoreUnavailableError(
        f"cannot reach qward serve at {request.url.scheme}://{request.url.netloc.decode()} "
        f"({type(exc).__name__})"
    )


class _Transport(httpx.HTTPTransport):
    """Connection failures become one ``CoreUnavailableError`` naming the server."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except httpx.TransportError as exc:
            raise _unreachable(request, exc) from None


class _AsyncTransport(httpx.AsyncHTTPTransport):
    """Connection failures become one ``CoreUnavailableError`` naming the server."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.TransportError as exc:
            raise _unreachable(request, exc) from None


def _raise_for(response: httpx.Response) -> None:
    if response.status_code == 200:
        return
    try:
        message = response.json().get("error", response.text)
    except ValueError:
        message = response.text
    text = message if isinstance(message, str) else json.dumps(message)
    if response.status_code == 404:
        raise NotFoundError(text)
    if response.status_code in (400, 413, 422):
        raise InputError(text)
    if response.status_code in (401, 403):
        # A missing, wrong or under-privileged token is the caller's input to fix.
        raise InputError(f"not authorised ({response.status_code}): {text}")
    raise CoreUnavailableError(f"server answered {response.status_code}: {text}")


def _parse_response(response: httpx.Response) -> tuple[dict[str, Any], tuple[Tensor, ...]]:
    _raise_for(response)
    length = response.headers.get("inference-header-content-length")
    body = response.content
    head, binary = (body[: int(length)], body[int(length) :]) if length else (body, b"")
    doc = json.loads(head)
    outputs, offset = [], 0
    for item in doc["outputs"]:
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is None:
            raise VerificationError("server returned JSON outputs although binary was requested")
        outputs.append(
            Tensor(
                name=item["name"],
                datatype=item["datatype"],
                shape=tuple(item["shape"]),
                data=binary[offset : offset + size],
            )
        )
        offset += size
    return doc, tuple(outputs)


def _check(
    verifier: Verifier,
    doc: dict[str, Any],
    model_sha256: str,
    inputs: Sequence[Tensor],
    outputs: tuple[Tensor, ...],
    seed: int,
) -> VerifiedInference:
    receipt = str(doc["parameters"]["qward_receipt"]).encode("utf-8")
    verified = verifier.verify(receipt)
    body = verified.body
    expected = {"model": model_sha256, "output": tensors_digest(outputs)}
    for section, digest in expected.items():
        if body[section]["sha256"] != digest:
            raise VerificationError(f"the receipt's {section} digest does not match this inference")
    # The public server seals HTTP inputs itself, unsalted: the receipt names them by digest.
    check_input(body["input"], inputs, None)
    if body["seed"] != seed:
        raise VerificationError("the receipt records a different seed")
    return VerifiedInference(outputs=outputs, receipt=receipt, verified=verified)


def _chunks(data: bytes, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    for start in range(0, len(data), _UPLOAD_CHUNK):
        chunk = data[start : start + _UPLOAD_CHUNK]
        yield chunk
        if progress is not None:
            progress(len(chunk))


def _attested_verifier(trust: TrustBundle, allow_software_only: bool) -> Verifier:
    """The receipt verifier for ``trust``, once its keys are known to be attested: a remote
    core's keys count only when hardware evidence bound them, or the caller explicitly accepts
    software-only isolation."""
    require_attested(trust, allow_software_only=allow_software_only)
    return Verifier(trust=trust)


class HTTPClient:
    """Synchronous SDK over ``qward serve``; ``trust`` must carry an affirming appraisal
    (``qward.sdk.attested_trust``) unless ``allow_software_only``."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        trust: TrustBundle,
        timeout: float = 60.0,
        allow_software_only: bool = False,
    ) -> None:
        # Refused before any connection pool is opened.
        self._verifier = _attested_verifier(trust, allow_software_only)
        self._http = httpx.Client(
            base_url=url, timeout=timeout, headers=_auth_headers(token), transport=_Transport()
        )
        self.trust = trust

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> HTTPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def model_sha256(self, model: str) -> str:
        """The digest the server reports for ``model``."""
        response = self._http.get(f"/v2/models/{model}")
        _raise_for(response)
        return str(response.json()["parameters"]["qward_model_sha256"])

    def infer(
        self,
        model: str,
        inputs: Sequence[Tensor],
        *,
        seed: int = 0,
        parameters: dict[str, Any] | None = None,
    ) -> VerifiedInference:
        """Run ``model``; returns outputs only after the receipt and digests verify."""
        digest = self.model_sha256(model)
        body, headers = _infer_request(inputs, seed, parameters)
        doc, outputs = _parse_response(
            self._http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
        )
        return _check(self._verifier, doc, digest, inputs, outputs, seed)

    def upload_model(
        self, model: bytes, *, name: str, progress: Callable[[int], None] | None = None
    ) -> str:
        """Seal ``model`` locally and upload it (needs an admin token and an upload-enabled
        server); returns its digest. ``progress`` is called with each uploaded byte count."""
        return self.upload_sealed(seal_model(model, trust=self.trust), name=name, progress=progress)

    def upload_sealed(
        self, sealed: bytes, *, name: str, progress: Callable[[int], None] | None = None
    ) -> str:
        """Upload a model already sealed to this server's trust bundle; returns its digest."""
        response = self._http.post(
            "/v1/models", params={"name": name}, content=_chunks(sealed, progress)
        )
        _raise_for(response)
        return str(response.json()["model_sha256"])


class AsyncHTTPClient:
    """Asynchronous SDK over ``qward serve``, same checks as ``HTTPClient``."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        trust: TrustBundle,
        timeout: float = 60.0,
        allow_software_only: bool = False,
    ) -> None:
        # Refused before any connection pool is opened.
        self._verifier = _attested_verifier(trust, allow_software_only)
        self._http = httpx.AsyncClient(
            base_url=url,
            timeout=timeout,
            headers=_auth_headers(token),
            transport=_AsyncTransport(),
        )
        self.trust = trust

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncHTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def model_sha256(self, model: str) -> str:
        """The digest the server reports for ``model``."""
        response = await self._http.get(f"/v2/models/{model}")
        _raise_for(response)
        return str(response.json()["parameters"]["qward_model_sha256"])

    async def infer(
        self,
        model: str,
        inputs: Sequence[Tensor],
        *,
        seed: int = 0,
        parameters: dict[str, Any] | None = None,
    ) -> VerifiedInference:
        """Run ``model``; returns outputs only after the receipt and digests verify."""
        digest = await self.model_sha256(model)
        body, headers = _infer_request(inputs, seed, parameters)
        response = await self._http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
        doc, outputs = _parse_response(response)
        return _check(self._verifier, doc, digest, inputs, outputs, seed)
