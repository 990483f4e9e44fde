"""Who may call which public endpoint, and the audit record of every call.

``AccessControl`` is ASGI middleware: it authenticates the bearer token, decides by role and model,
and asks the core to log the decision *before* the request runs (fail closed: no log entry, no
request). A refused call gets 401 (no or unknown token) or 403 (wrong role or model) and reaches
no handler. Only liveness, readiness, metrics and the API schema are open without a token.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from qward.core_api import CoreInterface
from qward.errors import QwardError
from qward.public.auth import Principal, TokenStore
from qward.sdk.core_client import AsyncCoreClient

__all__ = ["AccessControl", "Rule", "rule_for"]

_OPEN = re.compile(r"^/(livez|readyz|metrics|docs|openapi\.json|v2/health/(live|ready)|v2)$")
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


def rule_for(method: str, path: str) -> Rule | None:
    """The rule for a request, or None when the endpoint is open to everyone."""
    if _OPEN.match(path):
        return None
    if match := _V2_MODEL.match(path):
        return Rule(roles=("client", "admin"), model=match.group(1))
    if match := _V1_INFER.match(path):
        return Rule(roles=("client", "admin"), model_sha256=match.group(1))
    if path == "/v1/models" and method == "POST":
        return Rule(roles=("admin",), upload=True)
    if path.startswith("/v2/repository"):
        return Rule(roles=("admin",))
    if path == "/v1/trust":
        return Rule(roles=("client", "auditor", "admin"))
    if path.startswith(("/log/", "/v1/log/")):
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
    ) -> None:
        self._app = app
        self._tokens = tokens
        self._core = core
        self._recorder = recorder
        self._allow_upload = allow_model_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request = Request(scope)
        rule = rule_for(request.method, request.url.path)
        if rule is None:
            await self._app(scope, receive, send)
            return
        principal = self._tokens.authenticate(_bearer(request))
        # Only a rule that names a model by digest needs the core (a blocking call) to decide.
        if rule.model_sha256 is None:
            status, reason = self._decide(rule, principal)
        else:
            status, reason = await run_in_threadpool(self._decide, rule, principal)
        try:
            await self._recorder.record_access(
                token_id=principal.token_id if principal else None,
                role=principal.role if principal else None,
                method=request.method,
                path=_TOKEN_IN_PATH.sub("qwt_[redacted]", request.url.path),
                decision="allow" if status == 200 else f"deny-{status}",
            )
        except QwardError as exc:
            await _error(503, f"the audit log is unavailable ({exc.code}); nothing was executed")(
                scope, receive, send
            )
            return
        if status != 200:
            await _error(status, reason)(scope, receive, send)
            return
        # Handlers record who asked (the token id, never the token) in the run's parameters.
        scope.setdefault("state", {})["qward_caller"] = principal.token_id if principal else None
        await self._app(scope, receive, send)

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


def _error(status: int, message: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    response: Response = JSONResponse(
        {
            "error": {
                "code": "unauthorized"
                if status == 401
                else "forbidden"
                if status == 403
                else "audit_unavailable",
                "message": message,
            }
        },
        status_code=status,
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )
    return response
