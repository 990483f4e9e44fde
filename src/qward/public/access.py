"""Who may call which public endpoint, and the audit record of every call.

``AccessControl`` is ASGI middleware: it authenticates the bearer token, decides by role and model,
and asks the core to log the decision *before* the request runs (fail closed: no log entry, no
request); an inference call's record travels with its run instead (``folded_access``). A refused
call gets 401 (no or unknown token) or 403 (wrong role or model) and reaches no handler. Liveness
and readiness are open without a token; metrics, the API schema and the public log's tiles are
open or not by setting (``AccessPolicy``). Refusals on ``/v2`` carry the V2 error body
``{"error": "<message>"}`` so that stock V2 clients can print them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from qward.core_api import AccessRecord, CoreInterface
from qward.errors import QwardError
from qward.public.auth import Principal, TokenStore
from qward.public.folded_access import folds_access, record_unclaimed
from qward.public.ratelimit import RateLimiter
from qward.public.refusals import RefusalAggregator
from qward.sdk.core_client import AsyncCoreClient

__all__ = ["AccessControl", "AccessPolicy", "Rule", "caller_may_use", "rule_for"]

# The audit console's page and its script and style carry no data; its API is for auditors.
_OPEN = re.compile(r"^/(livez|readyz|v2/health/(live|ready)|v2|audit|audit/static/[a-z.]+)$")
_DOCS = re.compile(r"^/(docs|docs/oauth2-redirect|redoc|openapi\.json)$")
# The C2SP tlog-tiles read paths: digests and ids only, no secrets, so monitors may read them.
_PUBLIC_LOG = re.compile(r"^/log/(checkpoint|tile/.*)$")
_V2_MODEL = re.compile(r"^/v2/models/([^/]+)(/.*)?$")
_V1_INFER = re.compile(r"^/v1/models/([0-9a-f]{64})/infer$")
# Only token ids may reach the log: a bearer token pasted into a URL path by mistake is redacted
# from the access record (the shape of ``auth.TokenStore`` tokens: ``qwt_`` and base64url).
_TOKEN_IN_PATH = re.compile(r"qwt_[A-Za-z0-9_-]+")


@dataclass(frozen=True, kw_only=True)
class Rule:
    """What a request needs: roles that may make it, and the model it concerns (if any)."""

    roles: tuple[str, ...]
    model: str | None = None
    model_sha256: str | None = None
    upload: bool = False


@dataclass(frozen=True, kw_only=True)
class AccessPolicy:
    """Which of the optional endpoints need a token; the defaults suit a production server."""

    metrics_requires_token: bool = True
    docs: bool = False
    log_requires_token: bool = False


_AUDITORS = ("auditor", "admin")
_OPENAI_GENERATION = ("/v1/chat/completions", "/v1/completions")


def rule_for(method: str, path: str, policy: AccessPolicy | None = None) -> Rule | None:
    """The rule for a request, or None when the endpoint is open to everyone."""
    policy = policy or AccessPolicy()
    if _OPEN.match(path) or (policy.docs and _DOCS.match(path)):
        return None
    if path == "/metrics":
        return Rule(roles=_AUDITORS) if policy.metrics_requires_token else None
    if _PUBLIC_LOG.match(path):
        return Rule(roles=_AUDITORS) if policy.log_requires_token else None
    if match := _V2_MODEL.match(path):
        return Rule(roles=("client", "admin"), model=match.group(1))
    if match := _V1_INFER.match(path):
        return Rule(roles=("client", "admin"), model_sha256=match.group(1))
    if path == "/v1/models" and method == "POST":
        return Rule(roles=("admin",), upload=True)
    if path.startswith("/v2/repository"):
        return Rule(roles=("admin",))
    if path in ("/v1/trust", "/v1/attestation") or (path == "/v1/models" and method == "GET"):
        return Rule(roles=("client", "auditor", "admin"))
    if path in _OPENAI_GENERATION:
        # The model is named in the JSON body: the route checks it (``caller_may_use``).
        return Rule(roles=("client", "admin"))
    if path.startswith(("/log/", "/v1/log/", "/audit/api/")):
        return Rule(roles=("auditor", "admin"))
    return Rule(roles=("admin",))


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class AccessControl:
    """ASGI middleware enforcing ``rule_for`` with ``tokens`` and logging every decision."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: TokenStore,
        core: CoreInterface,
        recorder: AsyncCoreClient,
        allow_model_upload: bool,
        policy: AccessPolicy | None = None,
        refusals: RefusalAggregator | None = None,
        per_token: RateLimiter | None = None,
        per_address: RateLimiter | None = None,
    ) -> None:
        self._per_token = per_token or RateLimiter(rate=1000, burst=2000)
        self._per_address = per_address or RateLimiter(rate=1000, burst=2000)
        self._app = app
        self._refusals = refusals or RefusalAggregator(recorder)
        self._policy = policy or AccessPolicy()
        self._tokens = tokens
        self._core = core
        self._recorder = recorder
        self._allow_upload = allow_model_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request = Request(scope)
        client = scope.get("client")
        address = str(client[0]) if client else "-"
        if (wait := self._per_address.take(address)) > 0:
            # Counted like any refusal; the answer is 429 whether or not the log takes it.
            with contextlib.suppress(QwardError):
                await self._refusals.refuse(
                    address=address,
                    token_id=None,
                    role=None,
                    method=request.method,
                    path=_TOKEN_IN_PATH.sub("qwt_[redacted]", request.url.path),
                    decision="deny-429",
                )
            await _busy(wait)(scope, receive, send)
            return
        rule = rule_for(request.method, request.url.path, self._policy)
        if rule is None:
            await self._app(scope, receive, send)
            return
        v2 = request.url.path == "/v2" or request.url.path.startswith("/v2/")
        principal = self._tokens.authenticate(_bearer(request))
        # Only a rule that names a model by digest needs the core (a blocking call) to decide.
        if principal is not None and (wait := self._per_token.take(principal.token_id)) > 0:
            status, reason = 429, f"rate limit for this token exceeded; retry in {wait:.1f} s"
        elif rule.model_sha256 is None:
            status, reason = self._decide(rule, principal)
        else:
            status, reason = await run_in_threadpool(self._decide, rule, principal)
        token_id = principal.token_id if principal else None
        role = principal.role if principal else None
        path = _TOKEN_IN_PATH.sub("qwt_[redacted]", request.url.path)
        record = AccessRecord(
            token_id=token_id, role=role, method=request.method, path=path, decision="allow"
        )
        folded = status == 200 and folds_access(request.method, request.url.path)
        try:
            if folded:
                # Its handler sends the record with the run (see ``folded_access``).
                send = record_unclaimed(scope, send, record, self._log_access, v2=v2)
            elif status == 200:
                await self._log_access(record)
            else:
                # Refusals are aggregated per source so that a flood of them is one record.
                await self._refusals.refuse(
                    address=address,
                    token_id=token_id,
                    role=role,
                    method=request.method,
                    path=path,
                    decision=f"deny-{status}",
                )
        except QwardError as exc:
            reason = f"the audit log is unavailable ({exc.code}); nothing was executed"
            await _error(503, reason, v2=v2)(scope, receive, send)
            return
        if status == 429:
            await _busy(wait, reason, v2=v2)(scope, receive, send)
            return
        if status != 200:
            await _error(status, reason, v2=v2)(scope, receive, send)
            return
        # Handlers record who asked (the token id, never the token) in the run's parameters.
        state = scope.setdefault("state", {})
        state["qward_caller"] = principal.token_id if principal else None
        state["qward_principal"] = principal
        await self._app(scope, receive, send)

    async def _log_access(self, record: AccessRecord) -> None:
        await self._recorder.record_access(
            token_id=record.token_id,
            role=record.role,
            method=record.method,
            path=record.path,
            decision=record.decision,
        )

    def _decide(self, rule: Rule, principal: Principal | None) -> tuple[int, str]:
        if principal is None:
            return 401, "a valid bearer token is required"
        if principal.role not in rule.roles:
            return 403, f"role {principal.role!r} may not call this endpoint"
        if rule.upload and not self._allow_upload:
            return 403, "model upload is disabled on this server (--allow-model-upload)"
        model = rule.model
        if rule.model_sha256 is not None:
            names = [
                m["name"] for m in self._core.models() if m["model_sha256"] == rule.model_sha256
            ]
            model = names[0] if names else rule.model_sha256
        if model is not None and not principal.may_use(model):
            return 403, f"this token may not use model {model!r}"
        return 200, ""


def _busy(
    wait: float, message: str = "", *, v2: bool = False
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    message = message or f"rate limit for this address exceeded; retry in {wait:.1f} s"
    code = "rate_limited"
    body: dict[str, Any] = (
        {"error": f"{code}: {message}"} if v2 else {"error": {"code": code, "message": message}}
    )
    headers = {"Retry-After": RateLimiter.retry_after(wait)}
    response: Response = JSONResponse(body, status_code=429, headers=headers)
    return response


_CODES = {401: "unauthorized", 403: "forbidden", 429: "rate_limited"}


def _error(
    status: int, message: str, *, v2: bool = False
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    code = _CODES.get(status, "audit_unavailable")
    # V2 clients (tritonclient) read ``error`` as a string; /v1 keeps its structured error.
    body: dict[str, Any] = (
        {"error": f"{code}: {message}"} if v2 else {"error": {"code": code, "message": message}}
    )
    response: Response = JSONResponse(
        body,
        status_code=status,
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )
    return response


def caller_may_use(request: Request, model: str) -> bool:
    """For routes whose model is in the body: whether the authenticated caller may use it (an
    unauthenticated server, ``--unsafe-no-auth``, lets everyone)."""
    if "qward_principal" not in request.scope.get("state", {}):
        return True
    principal: Principal | None = request.scope["state"]["qward_principal"]
    return principal is not None and principal.may_use(model)
