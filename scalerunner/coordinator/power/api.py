"""The power routes of the REST API (docs/power.md): status, on/off/cycle, energy.

Results are per node: a bulk action where some nodes failed is still 200, each failed node with
its ``cause`` and a message naming it and its outlet. Token auth as every other route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse

from ..api.models import EnergyView, PowerRequest, PowerResult
from ..api.service import PowerApi
from .sequence import Op

__all__ = ["install"]


def _view(r: Any) -> PowerResult:
    return PowerResult(
        node=r.node, ok=r.ok, outlet=r.outlet, state=r.state, watts=r.watts, cause=r.cause, message=r.message
    )


def install(app: FastAPI, power: PowerApi, auth: Any) -> None:
    @app.get("/api/v1/power", dependencies=[auth])
    async def power_status(node: Annotated[list[str] | None, Query()] = None) -> list[PowerResult]:
        """Every node's outlet (or the ``node``s asked for): state and watts."""
        return [_view(r) for r in await power.status(node)]

    @app.post("/api/v1/power/{action}", dependencies=[auth])
    async def power_action(action: Literal["on", "off", "cycle"], body: PowerRequest) -> list[PowerResult]:
        """Switch the nodes in parallel; answers when every node's action has ended."""
        return [_view(r) for r in await power.act(body.nodes, Op(action), body.reason)]

    @app.get("/api/v1/energy", dependencies=[auth], response_model=list[EnergyView])
    async def energy(
        node: Annotated[list[str] | None, Query()] = None,
        since: float | None = None,
        until: float | None = None,
        job: str | None = None,
    ) -> Any:
        """Energy per node over [since, until] (default the last hour), or per attempt of ``job``."""
        if job is not None:
            try:
                rows = await power.job_energy(job)
            except LookupError as exc:
                return JSONResponse({"error": str(exc.args[0]), "job": job}, status_code=404)
        else:
            if since is not None and until is not None and until < since:
                raise HTTPException(422, f"until ({until}) is before since ({since})")
            rows = await power.energy(node, since, until)
        return [
            EnergyView(
                node=r.node,
                since=r.since,
                until=r.until,
                wh=r.energy.wh,
                covered_s=r.energy.covered_s,
                samples=r.energy.samples,
                mean_w=r.energy.mean_w,
                job=r.job,
                attempt=r.attempt,
            )
            for r in rows
        ]
