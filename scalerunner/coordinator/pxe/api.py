"""The image registry's REST endpoints (docs/images.md lists them), added to the coordinator's API.

Every route takes the operator's API token. Blobs are uploaded streaming, one per request, and
hashed while they are written; an image version is then created from their digests.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..api.errors import errors
from ..api.models import ErrorBody
from ..store.base import ImageRecord, OverrideRecord, PromotionRecord
from .blobs import BlobError
from .registry import ImageError, ImageRegistry

__all__ = ["install"]

_DIGEST = r"^[0-9a-f]{64}$"


class FileSpec(BaseModel):
    name: str = Field(description="as nodes ask for it: no '/', no '..'")
    role: str = Field(description="kernel, initrd, dtb or firmware")
    sha256: str = Field(pattern=_DIGEST, description="the digest of an uploaded blob")


class FileView(FileSpec):
    size: int


class ImageCreate(BaseModel):
    name: str = Field(max_length=64)
    version: str = Field(max_length=64)
    arch: str = Field(description="amd64, arm64 or riscv64")
    cmdline: str = Field(
        "", description="kernel command line template: {node}, {mac} and {url} are filled in"
    )
    files: list[FileSpec] = Field(min_length=1, max_length=4096)


class ImageView(BaseModel):
    name: str
    version: str
    arch: str
    cmdline: str
    created_at: float
    size: int = Field(description="bytes, all files together")
    files: list[FileView]
    promoted_to: list[str] = Field(description="the groups this build is the current promotion of")
    overridden_for: list[str] = Field(description="the nodes whose override boots this build")


class PromotionView(BaseModel):
    group: str
    arch: str
    seq: int
    image: str
    version: str
    at: float
    rolled_back_at: float | None = None


class OverrideView(BaseModel):
    node: str
    image: str
    version: str
    at: float


class ImageDetail(BaseModel):
    name: str
    versions: list[ImageView]
    history: list[PromotionView] = Field(description="every promotion of this image, by group, arch and seq")
    overrides: list[OverrideView]


class BlobCheck(BaseModel):
    digests: list[Annotated[str, Field(pattern=_DIGEST)]] = Field(max_length=4096)


class BlobMissing(BaseModel):
    missing: list[str]


class BlobView(BaseModel):
    sha256: str
    size: int
    created: bool = Field(description="false: the blob was already stored; the body was not read")


class PromoteRequest(BaseModel):
    group: str | None = Field(None, description="promote to this node group ...")
    node: str | None = Field(None, description="... or set this node's override")
    arch: str | None = Field(None, description="only this arch's build (group promotions)")


class PromoteResult(BaseModel):
    promotions: list[PromotionView] = []
    override: OverrideView | None = None


class RollbackRequest(BaseModel):
    group: str
    arch: str | None = None


class RemoveResult(BaseModel):
    removed: list[ImageView]
    blobs_deleted: int


class OverrideCleared(BaseModel):
    node: str
    cleared: bool = Field(description="false: the node had no override")


def _promotion(p: PromotionRecord) -> PromotionView:
    return PromotionView(
        group=p.group,
        arch=p.arch,
        seq=p.seq,
        image=p.image,
        version=p.version,
        at=p.at,
        rolled_back_at=p.rolled_back_at,
    )


def _override(o: OverrideRecord) -> OverrideView:
    return OverrideView(node=o.node, image=o.image, version=o.version, at=o.at)


def _view(registry: ImageRegistry, i: ImageRecord) -> ImageView:
    return ImageView(
        name=i.name,
        version=i.version,
        arch=i.arch,
        cmdline=i.cmdline,
        created_at=i.created_at,
        size=sum(f.size for f in i.files),
        files=[FileView(name=f.name, role=f.role, sha256=f.digest, size=f.size) for f in i.files],
        promoted_to=[
            p.group for p in registry.current() if (p.image, p.arch, p.version) == (i.name, i.arch, i.version)
        ],
        overridden_for=[
            o.node
            for o in registry.overrides()
            if (o.image, o.version) == (i.name, i.version) and registry.node_arch(o.node) in (None, i.arch)
        ],
    )


_BLOB_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "the blob is larger than the registry takes"},
    507: {"model": ErrorBody, "description": "the registry could not write it (disk full, I/O error)"},
    422: {
        "model": ErrorBody,
        "description": "the digest is malformed, or the content's sha256 is not the digest it was sent as",
    },
}


def install(app: FastAPI, registry: ImageRegistry, auth: Any) -> None:
    """Add the image routes and their error answers to ``app``; ``auth`` is the operator's Depends."""

    @app.exception_handler(ImageError)
    async def _image(_: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "image": exc.image}, status_code=exc.status)

    @app.exception_handler(BlobError)
    async def _blob(_: Request, exc: BlobError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    router = APIRouter(prefix="/api/v1/images")

    @router.post("/blobs/missing", dependencies=[auth], responses=errors(422))
    async def missing_blobs(body: BlobCheck) -> BlobMissing:
        """Which of these blobs the registry does not hold (upload only those)."""
        return BlobMissing(missing=registry.missing(body.digests))

    @router.put(
        "/blobs/{sha256}",
        dependencies=[auth],
        status_code=201,
        responses={200: {"model": BlobView, "description": "the blob was already stored"}, **_BLOB_ERRORS},
    )
    async def put_blob(sha256: str, request: Request) -> BlobView:
        """Upload one blob, streaming; the body's sha256 must be the path's. 201 stored, 200
        already held. A mismatch is refused (422) and nothing of it is kept."""
        size, created = await registry.put_blob(sha256, request.stream())
        view = BlobView(sha256=sha256, size=size, created=created)
        return view if created else JSONResponse(view.model_dump(), status_code=200)  # type: ignore[return-value]

    @router.post(
        "",
        dependencies=[auth],
        status_code=201,
        responses={
            200: {"model": ImageView, "description": "the version exists with this content"},
            **errors(409, 422),
        },
    )
    async def create(body: ImageCreate) -> ImageView:
        """Create an image version from uploaded blobs (201; 200 if it exists with the same
        content). 409: a blob is not uploaded, or the version exists with other content."""
        record, created = await registry.add(
            body.name, body.version, body.arch, body.cmdline, [(f.name, f.role, f.sha256) for f in body.files]
        )
        view = _view(registry, record)
        return view if created else JSONResponse(view.model_dump(), status_code=200)  # type: ignore[return-value]

    @router.get("", dependencies=[auth])
    async def list_images(name: Annotated[str | None, Query()] = None) -> list[ImageView]:
        """Every build of every image version (of ``name`` if given), by name, arch and age."""
        return [_view(registry, i) for i in registry.images(name)]

    @router.get("/{name}", dependencies=[auth], responses=errors(404))
    async def show(name: str) -> ImageDetail:
        versions = registry.versions(name)
        return ImageDetail(
            name=name,
            versions=[_view(registry, i) for i in versions],
            history=[_promotion(p) for p in registry.history(name)],
            overrides=[_override(o) for o in registry.overrides() if o.image == name],
        )

    @router.get("/{name}/{version}", dependencies=[auth], responses=errors(404))
    async def show_version(name: str, version: str) -> list[ImageView]:
        """The builds (one per arch) of one version."""
        return [_view(registry, i) for i in registry.versions(name, version)]

    @router.post("/{name}/{version}/promote", dependencies=[auth], responses=errors(404, 409, 422))
    async def promote(name: str, version: str, body: PromoteRequest) -> PromoteResult:
        """Promote to a group (each arch the version has, or ``arch``), or set a node's override."""
        if (body.group is None) == (body.node is None):
            raise ImageError(422, "give exactly one of group and node", name)
        if body.node is not None:
            if body.arch is not None:
                raise ImageError(422, "an override names a version; the node's arch picks the build", name)
            return PromoteResult(override=_override(await registry.override(body.node, name, version)))
        assert body.group is not None
        done = await registry.promote(name, version, body.group, body.arch)
        return PromoteResult(promotions=[_promotion(p) for p in done])

    @router.post("/{name}/rollback", dependencies=[auth], responses=errors(404, 409, 422))
    async def rollback(name: str, body: RollbackRequest) -> list[PromotionView]:
        """Undo the image's current promotion in a group; answers the promotions now current."""
        registry.versions(name)
        return [_promotion(p) for p in await registry.rollback(name, body.group, body.arch)]

    @router.delete("/{name}/{version}", dependencies=[auth], responses=errors(404, 409))
    async def remove(name: str, version: str, arch: Annotated[str | None, Query()] = None) -> RemoveResult:
        """Remove a version (all arches, or ``arch``) and the blobs nothing else uses; refused
        (409) while it is promoted to a group or some node's override."""
        views = [_view(registry, i) for i in registry.versions(name, version)]
        removed, deleted = await registry.remove(name, version, arch)
        keep = {(r.arch, r.version) for r in removed}
        return RemoveResult(removed=[v for v in views if (v.arch, v.version) in keep], blobs_deleted=deleted)

    app.include_router(router)

    overrides = APIRouter(prefix="/api/v1/image-overrides")

    @overrides.get("", dependencies=[auth])
    async def list_overrides() -> list[OverrideView]:
        return [_override(o) for o in registry.overrides()]

    @overrides.delete("/{node}", dependencies=[auth], responses=errors(404))
    async def clear_override(node: str) -> OverrideCleared:
        """The node boots its group's promotion again."""
        return OverrideCleared(node=node, cleared=await registry.clear_override(node))

    app.include_router(overrides)
