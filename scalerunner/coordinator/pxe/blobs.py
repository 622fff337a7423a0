"""Content-addressed files of the image registry: ``<root>/sha256/<hex>``, read-only (0444).

A blob is written to a temp file in ``<root>/tmp/`` while it is hashed, fsynced, checked
against the digest it was announced as, then renamed into place: a blob file is always whole
and always holds what its name says. A mismatch or a broken upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from ...atomic import fsync_dir
from ..errors import CoordinatorError
from .rules import digest_problem

__all__ = ["BlobError", "BlobStore"]

log = logging.getLogger("scalerunner.coordinator.pxe.blobs")

MAX_BLOB = 4 << 30  # bytes; a RAM-booted node's initrd is far smaller


class BlobError(CoordinatorError):
    """A blob could not be stored: ``status`` is the HTTP answer (413 too large, 422 bad digest
    or content that does not match it, 507 the registry's disk failed), ``digest`` the blob."""

    def __init__(self, status: int, digest: str, detail: str) -> None:
        super().__init__(f"blob {digest}: {detail}")
        self.status = status
        self.digest = digest
        self.detail = detail


class BlobStore:
    def __init__(self, root: Path, *, max_size: int = MAX_BLOB) -> None:
        self.root = root
        self.dir = root / "sha256"
        self.tmp = root / "tmp"
        self.max_size = max_size

    def start(self) -> None:
        for d in (self.dir, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        # Uploads cut off by a crash or a stop: never complete, never referenced.
        for stale in self.tmp.iterdir():
            stale.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        """Where blob ``digest`` is (or would be); ValueError for a malformed digest, so a
        crafted one can never reach outside the blob directory."""
        problem = digest_problem(digest)
        if problem:
            raise ValueError(problem)
        return self.dir / digest

    def has(self, digest: str) -> bool:
        return digest_problem(digest) is None and self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def on_disk(self) -> dict[str, float]:
        """Every stored blob's digest and mtime."""
        found: dict[str, float] = {}
        for entry in os.scandir(self.dir):
            if digest_problem(entry.name) is None and entry.is_file():
                found[entry.name] = entry.stat().st_mtime
        return found

    async def put(self, digest: str, body: AsyncIterator[bytes]) -> tuple[int, bool]:
        """Store ``body`` as blob ``digest``: (its size, whether it was new). A blob already held
        is answered at once, its body left unread."""
        problem = digest_problem(digest)
        if problem:
            raise BlobError(422, digest, problem)
        final = self.dir / digest
        if final.is_file():
            return final.stat().st_size, False
        hasher = hashlib.sha256()
        size = 0

        def disk(exc: OSError) -> BlobError:  # the registry's disk failed, not the client
            return BlobError(507, digest, f"cannot store it in {self.root}: {exc.strerror or exc}")

        try:
            fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix=f"{digest[:12]}-")
        except OSError as exc:
            raise disk(exc) from exc
        try:
            with os.fdopen(fd, "wb") as f:
                async for piece in body:  # a client that goes away raises here, as itself
                    size += len(piece)
                    if size > self.max_size:
                        raise BlobError(413, digest, f"larger than {self.max_size} bytes")
                    hasher.update(piece)
                    try:
                        f.write(piece)
                    except OSError as exc:
                        raise disk(exc) from exc
                try:
                    await asyncio.to_thread(_sync, f)
                except OSError as exc:
                    raise disk(exc) from exc
            got = hasher.hexdigest()
            if got != digest:
                raise BlobError(422, digest, f"the content's sha256 is {got}, not the digest it was sent as")
            try:
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
                await asyncio.to_thread(fsync_dir, self.dir)
            except OSError as exc:
                raise disk(exc) from exc
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        log.info("blob stored", extra={"digest": digest, "size": size})
        return size, True

    def delete(self, digests: set[str]) -> int:
        """Remove these blobs (those present); returns how many were removed."""
        removed = 0
        for digest in digests:
            with contextlib.suppress(FileNotFoundError):
                self.path(digest).unlink()
                removed += 1
        if removed:
            fsync_dir(self.dir)
            log.info("blobs removed", extra={"count": removed})
        return removed


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
