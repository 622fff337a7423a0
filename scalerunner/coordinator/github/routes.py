"""The GitHub part's HTTP routes, added to the coordinator's API by ``api/app.py``.

Neither takes the operator's bearer token: GitHub signs its deliveries instead (HMAC-SHA256
under the webhook secret), and a runner job claims its JIT config with its own single-use
token.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..api.models import ErrorBody
from .service import CLAIM_PATH, GitHubService
from .webhook import WebhookError

__all__ = ["install"]

_bearer = HTTPBearer(auto_error=False)
MAX_BODY = 25 * 2**20  # GitHub caps a delivery's payload at 25 MB


def install(app: FastAPI, service: GitHubService, auth: Any) -> None:
    """``auth`` is the operator's Depends, for the read-only listing of runner records."""

    @app.get("/api/v1/github/runners", dependencies=[auth])
    async def github_runners(
        state: Annotated[list[str] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> list[dict[str, Any]]:
        """What became of each workflow job seen (newest first): its runner, Scalerunner job,
        state and history (docs/github.md)."""
        records = sorted(service.core.records.values(), key=lambda r: r.history[0][0] if r.history else 0)
        rows = [msgspec.to_builtins(r) for r in reversed(records) if not state or r.state.value in state]
        return rows[:limit]

    @app.post(
        "/webhooks/github",
        status_code=202,
        responses={
            200: {"description": "a ping, or a replayed delivery (ignored)"},
            400: {"model": ErrorBody, "description": "not a workflow_job payload, or no delivery id"},
            401: {"model": ErrorBody, "description": "missing or wrong X-Hub-Signature-256"},
            413: {"model": ErrorBody, "description": "larger than any GitHub delivery"},
            503: {"model": ErrorBody, "description": "the GitHub part is not running yet"},
        },
    )
    async def github_webhook(request: Request) -> JSONResponse:
        """GitHub's ``workflow_job`` deliveries (docs/github.md); answered before any slow work."""
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > MAX_BODY:
            return JSONResponse({"error": f"a delivery is at most {MAX_BODY} bytes"}, status_code=413)
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"error": f"a delivery is at most {MAX_BODY} bytes"}, status_code=413)
        try:
            status, answer = await service.webhook(body, request.headers)
        except WebhookError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return JSONResponse(answer, status_code=status)

    @app.get(
        CLAIM_PATH,
        response_class=PlainTextResponse,
        responses={401: {"model": ErrorBody, "description": "not a claim token, or one already used"}},
    )
    async def github_jitconfig(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> PlainTextResponse:
        """A runner job's JIT config, once, for the claim token in its environment."""
        config = service.claim(creds.credentials) if creds is not None else None
        if config is None:
            return JSONResponse(  # type: ignore[return-value]
                {"error": "not a claim token of a runner job, or one already used"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return PlainTextResponse(config, headers={"Cache-Control": "no-store"})
