"""Artifacts: the files an attempt leaves in its workdir that match the job's globs, and their upload.

``select`` is pure apart from reading the directory: a glob is relative to the workdir, may not be
absolute or use ``..``, and a match counts only if it is a regular file reached without a symlink
anywhere on its way (a job cannot hand out /etc/shadow by linking to it). What is refused is said,
per glob or per file, so the finished status can tell the operator.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:  # httpx costs the agent ~10 MB: loaded only when a job has artifacts
    import httpx

__all__ = ["Artifact", "Selection", "UploadError", "select", "upload"]

MAX_FILES = 1000  # per attempt: a glob like "**" in a huge tree stops here, and says so


@dataclass(frozen=True)
class Artifact:
    name: str  # relative to the workdir, '/'-separated; the name it is uploaded under
    path: Path
    size: int


@dataclass(frozen=True)
class Selection:
    artifacts: tuple[Artifact, ...]
    problems: tuple[str, ...]


def _bad_glob(pattern: str) -> str | None:
    p = PurePosixPath(pattern)
    if not pattern or p.is_absolute():
        return "must be a relative path"
    if ".." in p.parts:
        return "must not use '..'"
    return None


def _confined(workdir: Path, candidate: Path) -> str | None:
    """Why ``candidate`` (found under ``workdir``) may not be uploaded; None if it may."""
    rel = candidate.relative_to(workdir)
    walk = workdir
    for part in rel.parts:
        walk = walk / part
        try:
            mode = walk.lstat().st_mode
        except OSError as exc:
            return f"cannot read: {exc.strerror}"
        if stat.S_ISLNK(mode):
            return "is or lies under a symbolic link"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    return None


def select(workdir: Path, patterns: list[str]) -> Selection:
    """The files under ``workdir`` that ``patterns`` match, in sorted order, each once."""
    root = workdir.resolve()
    found: dict[str, Artifact] = {}
    problems: list[str] = []
    for pattern in patterns:
        if why := _bad_glob(pattern):
            problems.append(f"artifact glob {pattern!r} {why}")
            continue
        matched = False
        for candidate in sorted(root.glob(pattern)):
            name = candidate.relative_to(root).as_posix()
            if candidate.is_dir() and not candidate.is_symlink():
                continue  # a directory is not an artifact; "dir/**" names its files
            matched = True
            if name in found:
                continue
            if why := _confined(root, candidate):
                problems.append(f"artifact {name} {why}: not uploaded")
                continue
            if len(found) >= MAX_FILES:
                problems.append(f"more than {MAX_FILES} artifacts: the rest not uploaded")
                return Selection(tuple(found.values()), tuple(problems))
            found[name] = Artifact(name, candidate, candidate.stat().st_size)
        if not matched:
            problems.append(f"artifact glob {pattern!r} matched nothing")
    return Selection(tuple(found[k] for k in sorted(found)), tuple(problems))


class UploadError(Exception):
    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"artifact {name}: {detail}")
        self.name = name
        self.detail = detail


async def upload(client: httpx.AsyncClient, url: str, token: str, artifact: Artifact) -> None:
    """PUT the file to ``{url}/{name}`` with the attempt's bearer token; streamed, not read whole."""

    async def body() -> AsyncIterator[bytes]:
        with artifact.path.open("rb") as f:
            while block := f.read(256 * 1024):
                yield block

    import httpx

    target = f"{url.rstrip('/')}/{quote(artifact.name)}"
    try:
        resp = await client.put(
            target,
            content=body(),
            headers={"Authorization": f"Bearer {token}", "Content-Length": str(artifact.size)},
        )
    except httpx.HTTPError as exc:
        raise UploadError(artifact.name, f"PUT {target} failed: {exc}") from exc
    if resp.status_code not in (200, 201):
        raise UploadError(artifact.name, f"PUT {target} answered {resp.status_code}: {resp.text[:200]}")
