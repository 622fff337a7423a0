"""The REST API (FastAPI: the OpenAPI spec is generated from the models).

Every route but /healthz and /metrics needs ``Authorization: Bearer TOKEN``.
Errors are JSON ``{"error": ..., "node": ...}`` with 404 for an unknown node,
409 for an action the node's state forbids, 422 for a request that is not valid,
502 when the node refused, 504 when the node did not answer.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ... import __version__
from ..dashboard import Feed
from ..dashboard import install as install_dashboard
from ..errors import NodeStateError, UnknownNode
from ..github import GitHubService
from ..github import routes as github_routes
from ..jobs import api as jobs_api
from ..jobs.manager import JobManager
from ..mqttlink import CommandFailed, CommandTimeout
from ..power import api as power_api
from ..pxe import api as images_api
from ..pxe.registry import ImageRegistry
from .errors import document_errors, errors
from .models import CommandResult, DrainRequest, EventView, HealthChange, NodeView
from .service import NodeService, PowerApi

_bearer = HTTPBearer(auto_error=False)


def create_app(
    service: NodeService,
    token: str,
    jobs: JobManager | None = None,
    power: PowerApi | None = None,
    dashboard: Feed | None = None,
    github: GitHubService | None = None,
    images: ImageRegistry | None = None,
) -> FastAPI:
    app = FastAPI(
        title="Scalerunner coordinator",
        version=__version__,
        description="Nodes, their lifecycle and health, and commands to them.",
    )

    def auth(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    Auth = Depends(auth)

    @app.exception_handler(UnknownNode)
    async def _unknown(_: Request, exc: UnknownNode) -> JSONResponse:
        return JSONResponse({"error": str(exc), "node": exc.node}, status_code=404)

    @app.exception_handler(NodeStateError)
    async def _state(_: Request, exc: NodeStateError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "node": exc.node}, status_code=409)

    @app.exception_handler(CommandTimeout)
    async def _timeout(_: Request, exc: CommandTimeout) -> JSONResponse:
        return JSONResponse({"error": str(exc), "node": exc.node}, status_code=504)

    @app.exception_handler(CommandFailed)
    async def _failed(_: Request, exc: CommandFailed) -> JSONResponse:
        return JSONResponse({"error": str(exc), "node": exc.node}, status_code=502)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        )
        return JSONResponse({"error": problems or "invalid request"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(service.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/v1/nodes", dependencies=[Auth])
    async def list_nodes() -> list[NodeView]:
        return await service.list_nodes()

    document_errors(app)  # 401 and 422 as the handlers below send them (api/errors.py)

    @app.get("/api/v1/nodes/{name}", dependencies=[Auth], responses=errors(404))
    async def get_node(name: str) -> NodeView:
        return await service.get_node(name)

    @app.post("/api/v1/nodes/{name}/drain", dependencies=[Auth], responses=errors(404, 409, 502, 504))
    async def drain(name: str, body: DrainRequest | None = None) -> CommandResult:
        detail = await service.drain(name, (body or DrainRequest()).reason)
        return CommandResult(node=name, ok=True, detail=detail)

    @app.post("/api/v1/nodes/{name}/undrain", dependencies=[Auth], responses=errors(404, 502, 504))
    async def undrain(name: str, body: DrainRequest | None = None) -> CommandResult:
        detail = await service.undrain(name, (body or DrainRequest()).reason)
        return CommandResult(node=name, ok=True, detail=detail)

    @app.post("/api/v1/nodes/{name}/identify", dependencies=[Auth], responses=errors(404, 409, 502, 504))
    async def identify(name: str) -> CommandResult:
        return CommandResult(node=name, ok=True, detail=await service.identify(name))

    @app.post("/api/v1/nodes/{name}/reboot", dependencies=[Auth], responses=errors(404, 409, 502, 504))
    async def reboot(name: str, body: DrainRequest | None = None) -> CommandResult:
        """The agent reboots its node; it answers before it goes down."""
        detail = await service.reboot(name, (body or DrainRequest(reason="operator reboot")).reason)
        return CommandResult(node=name, ok=True, detail=detail)

    @app.put("/api/v1/nodes/{name}/health", dependencies=[Auth], responses=errors(404))
    async def set_health(name: str, body: HealthChange) -> NodeView:
        return await service.set_health(name, body.health, body.reason)

    @app.get("/api/v1/events", dependencies=[Auth])
    async def events(
        node: str | None = None,
        after: Annotated[int | None, Query(ge=0)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[EventView]:
        return await service.events(node, after, limit)

    if jobs is not None:
        jobs_api.install(app, jobs, Auth)  # /api/v1/jobs/... (coordinator/jobs/api.py)
    if power is not None:
        power_api.install(app, power, Auth)  # /api/v1/power, /api/v1/energy (coordinator/power/api.py)
    if dashboard is not None:
        install_dashboard(app, dashboard, Auth)  # /, /dashboard/*, /api/v1/stream (coordinator/dashboard/)
    if images is not None:
        images_api.install(app, images, Auth)  # /api/v1/images, /api/v1/image-overrides (coordinator/pxe/)
    if github is not None:
        github_routes.install(app, github, Auth)  # /webhooks/github (signed by GitHub), /api/v1/github/*
    return app
