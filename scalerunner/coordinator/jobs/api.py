"""The jobs' REST endpoints (docs/jobs.md lists them), added to the coordinator's API.

Operator routes use the API token like every other route. The artifact upload is the one
route that takes a different token: the per-attempt upload token the node got with its run
command (so a node can never act as the operator, nor upload for another job).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from ..api.errors import errors
from ..api.models import ErrorBody
from .core import Job, JobStateError, UnknownJob
from .manager import ArtifactError, JobManager, artifact_name_problem
from .spec import JobSpecError, spec_from_mapping

__all__ = ["ArtifactView", "AttemptView", "JobView", "LogView", "install"]

_bearer = HTTPBearer(auto_error=False)


class AttemptView(BaseModel):
    number: int
    node: str
    state: str = Field(description="starting, running, succeeded, failed, timed_out, cancelled, lost")
    dispatched_at: float
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    reason: str = ""
    log_chunks: int = 0


class HistoryEntry(BaseModel):
    at: float
    state: str
    reason: str


class JobView(BaseModel):
    id: str
    name: str
    state: str = Field(description="queued, starting, running, succeeded, failed, cancelled, timed_out")
    reason: str
    project: str
    priority: int
    image: str
    arch: str | None = None
    labels: list[str] = []
    submitted_at: float
    updated_at: float
    exit_code: int | None = None
    node: str | None = Field(None, description="the node of the latest attempt")
    attempts: list[AttemptView] = []
    history: list[HistoryEntry] = []
    spec: dict[str, Any] = {}


class LogChunkView(BaseModel):
    attempt: int
    seq: int
    stream: str = Field(description="stdout, stderr, or gap (a chunk the node no longer had)")
    data: str


class LogView(BaseModel):
    chunks: list[LogChunkView]
    next_attempt: int = Field(description="pass back as ?attempt= to read on")
    next_seq: int = Field(description="pass back as ?seq= to read on")
    done: bool = Field(description="the job is over and its whole log has been read")


class ArtifactView(BaseModel):
    attempt: int
    name: str
    sha256: str
    size: int
    at: float


class CancelRequest(BaseModel):
    reason: str = "operator request"


def view(job: Job) -> JobView:
    a = job.current
    return JobView(
        id=job.id,
        name=job.spec.name,
        state=job.state.value,
        reason=job.reason,
        project=job.spec.project,
        priority=job.spec.priority,
        image=job.spec.image,
        arch=job.spec.arch,
        labels=list(job.spec.labels),
        submitted_at=job.submitted_at,
        updated_at=job.updated_at,
        exit_code=job.exit_code,
        node=a.node if a is not None else None,
        attempts=[AttemptView(**msgspec.to_builtins(x)) for x in job.attempts],
        history=[HistoryEntry(at=at, state=state, reason=reason) for at, state, reason in job.history],
        spec=msgspec.to_builtins(job.spec),
    )


def install(app: FastAPI, jobs: JobManager, auth: Any) -> None:
    """Add the job routes and their error answers to ``app``; ``auth`` is the operator's Depends."""

    @app.exception_handler(UnknownJob)
    async def _unknown(_: Request, exc: UnknownJob) -> JSONResponse:
        return JSONResponse({"error": str(exc), "job": exc.job}, status_code=404)

    @app.exception_handler(JobStateError)
    async def _state(_: Request, exc: JobStateError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "job": exc.job}, status_code=409)

    @app.exception_handler(JobSpecError)
    async def _spec(_: Request, exc: JobSpecError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "key": exc.key}, status_code=422)

    @app.exception_handler(ArtifactError)
    async def _artifact(_: Request, exc: ArtifactError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    router = APIRouter(prefix="/api/v1/jobs")

    @router.post("", dependencies=[auth], status_code=201, responses=errors(422))
    async def submit(spec: dict[str, Any]) -> JobView:
        """Queue a job (the body is a job spec object); answered once it is on disk."""
        return view(await jobs.submit(spec_from_mapping(spec, "request")))

    @router.get("", dependencies=[auth])
    async def list_jobs(
        state: Annotated[list[str] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> list[JobView]:
        """The latest jobs, newest first; ``state`` (repeatable) narrows them."""
        return [view(j) for j in await jobs.list_jobs(state, limit)]

    @router.get("/{job_id}", dependencies=[auth], responses=errors(404))
    async def get_job(job_id: str) -> JobView:
        return view(await jobs.get(job_id))

    @router.post("/{job_id}/cancel", dependencies=[auth], responses=errors(404, 409))
    async def cancel(job_id: str, body: CancelRequest | None = None) -> JobView:
        return view(await jobs.cancel(job_id, (body or CancelRequest()).reason))

    @router.get("/{job_id}/log", dependencies=[auth], responses=errors(404))
    async def read_log(
        job_id: str,
        attempt: Annotated[int, Query(ge=0)] = 0,
        seq: Annotated[int, Query(ge=-1)] = -1,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
        wait: Annotated[float, Query(ge=0, le=60)] = 0,
    ) -> LogView:
        """Chunks after ``(attempt, seq)`` in order, never skipping one; with ``wait``, waits up
        to that many seconds for something new (long poll, for ``jobs logs -f``)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        while True:
            chunks, done = await jobs.log(job_id, (attempt, seq), limit)
            if chunks or done or loop.time() >= until:
                break
            await jobs.wait_changed(min(until - loop.time(), 1.0))
        nxt = (chunks[-1].attempt, chunks[-1].seq) if chunks else (attempt, seq)
        return LogView(
            chunks=[LogChunkView(attempt=c.attempt, seq=c.seq, stream=c.stream, data=c.data) for c in chunks],
            next_attempt=nxt[0],
            next_seq=nxt[1],
            done=done and len(chunks) < limit,
        )

    @router.get("/{job_id}/artifacts", dependencies=[auth], responses=errors(404))
    async def list_artifacts(job_id: str) -> list[ArtifactView]:
        await jobs.get(job_id)
        return [
            ArtifactView(attempt=a.attempt, name=a.name, sha256=a.sha256, size=a.size, at=a.at)
            for a in await jobs.store.list_artifacts(job_id)
        ]

    @router.get("/{job_id}/artifacts/{name:path}", dependencies=[auth], responses=errors(404))
    async def get_artifact(job_id: str, name: str, attempt: int | None = None) -> FileResponse:
        """One artifact's bytes (of the latest attempt that has it, unless ``attempt`` says)."""
        await jobs.get(job_id)
        found = [
            a
            for a in await jobs.store.list_artifacts(job_id)
            if a.name == name and (attempt is None or a.attempt == attempt)
        ]
        if not found:
            raise ArtifactError(404, f"job {job_id} has no artifact {name!r}")
        a = found[-1]
        path = jobs.artifact_path(a.sha256)
        if not path.exists():
            raise ArtifactError(410, f"artifact {name!r} of job {job_id}: its file {path} is gone")
        return FileResponse(path, filename=name.rsplit("/", 1)[-1], media_type="application/octet-stream")

    @router.put(
        "/{job_id}/attempts/{attempt}/artifacts/{name:path}",
        status_code=201,
        responses={
            400: {"model": ErrorBody, "description": "the artifact name is not a plain relative path"},
            401: {"model": ErrorBody, "description": "not the upload token of this attempt"},
            **errors(404),
        },
    )
    async def upload_artifact(
        job_id: str,
        attempt: int,
        name: str,
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ArtifactView:
        """Upload one artifact; ``Authorization: Bearer`` the attempt's upload token."""
        if creds is None or not jobs.check_upload_token(job_id, attempt, creds.credentials):
            return JSONResponse(  # type: ignore[return-value]
                {"error": f"not the upload token of job {job_id} attempt {attempt}"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        problem = artifact_name_problem(name)
        if problem:
            raise ArtifactError(400, f"artifact name {name!r} {problem}")
        a = await jobs.put_artifact(job_id, attempt, name, request.stream())
        return ArtifactView(attempt=a.attempt, name=a.name, sha256=a.sha256, size=a.size, at=a.at)

    app.include_router(router)
