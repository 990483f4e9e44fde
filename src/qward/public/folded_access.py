"""An inference call's access record, sent to the core with the run instead of before it.

For most routes ``AccessControl`` logs the access decision in its own core call before the handler
runs. An inference route instead hands the record to its handler (``PendingAccess``), which sends
it with the run: the core logs it in the same transaction as the input's key use, before it opens
the input, so "logged before it runs" holds with one round trip instead of two. The core logs a
folded record even when the run then fails. A handler that fails before it reaches the core (a
malformed body, say) never claims the record: ``record_unclaimed`` then logs it before the first
byte of the response leaves, and answers 503 instead if the log refuses it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message, Scope, Send

from qward.core_api import AccessRecord
from qward.errors import QwardError

__all__ = ["PendingAccess", "claim_access", "folds_access", "record_unclaimed"]

# The routes whose handler sends the access record with its one run.
_FOLDED = re.compile(r"^/(v2/models/[^/]+(/versions/[^/]+)?|v1/models/[0-9a-f]{64})/infer$")
_STATE_KEY = "qward_access"


def folds_access(method: str, path: str) -> bool:
    """Whether the handler of ``method path`` sends its access record with the run."""
    return method == "POST" and _FOLDED.match(path) is not None


class PendingAccess:
    """An access record that its handler may claim once, to send it with the run."""

    def __init__(self, record: AccessRecord) -> None:
        self.record = record
        self.claimed = False

    def claim(self) -> AccessRecord:
        """The record, for the one core call that logs it; later calls get ``None`` from
        ``claim_access``."""
        self.claimed = True
        return self.record


def claim_access(request: Request) -> AccessRecord | None:
    """The request's pending access record, claimed; ``None`` if there is none left to send."""
    pending: PendingAccess | None = request.scope.get("state", {}).get(_STATE_KEY)
    if pending is None or pending.claimed:
        return None
    return pending.claim()


def record_unclaimed(
    scope: Scope,
    send: Send,
    record: AccessRecord,
    log: Callable[[AccessRecord], Awaitable[None]],
    *,
    v2: bool,
) -> Send:
    """Install ``record`` for the handler; the returned ``send`` logs it first if unclaimed."""
    pending = PendingAccess(record)
    scope.setdefault("state", {})[_STATE_KEY] = pending
    refused = False

    async def send_after_logging(message: Message) -> None:
        nonlocal refused
        if refused:
            return
        if message["type"] == "http.response.start" and not pending.claimed:
            pending.claimed = True
            try:
                await log(record)
            except QwardError as exc:
                refused = True
                await _unavailable(exc, v2=v2)(scope, _no_receive, send)
                return
        await send(message)

    return send_after_logging


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _unavailable(exc: QwardError, *, v2: bool) -> JSONResponse:
    message = f"the audit log is unavailable ({exc.code}); the call was not answered"
    body: dict[str, Any] = (
        {"error": f"audit_unavailable: {message}"}
        if v2
        else {"error": {"code": "audit_unavailable", "message": message}}
    )
    return JSONResponse(body, status_code=503)
