"""OCI images on the node: pulled with skopeo, unpacked with umoci, cached by manifest digest.

``ImageStore.pull("registry.example/ns/app:tag")`` asks the registry for the manifest (one small
request), and returns the cached root filesystem when that digest is already unpacked; otherwise
it copies the image into a temp OCI layout, unpacks it, and renames the result into place, so a
crash never leaves a half-unpacked image that looks complete. Concurrent pulls of one reference
share one pull. Layout of the cache (docs/runtime-vm.md says how to clear it)::

    <cache>/sha256-<hex>/rootfs/       the unpacked root filesystem
    <cache>/sha256-<hex>/config.json   umoci's runtime config (the image's env, cmd, cwd)
    <cache>/sha256-<hex>/image.json    what was pulled, for people reading the cache
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalerunner.atomic import atomic_write

__all__ = ["Image", "ImageError", "ImageStore", "registry_of"]

log = logging.getLogger("scalerunner.nodeagent.images")


class ImageError(Exception):
    """An image could not be had; names the image and the cause."""

    def __init__(self, image: str, message: str) -> None:
        super().__init__(f"image {image}: {message}")
        self.image = image


@dataclass(frozen=True, slots=True)
class Image:
    reference: str  # as asked for, e.g. "127.0.0.1:5000/test/busybox:1"
    digest: str  # "sha256:<hex>" of the manifest the registry served
    rootfs: Path
    env: tuple[str, ...]  # the image's own environment, "KEY=value"
    cmd: tuple[str, ...]  # its default command


def registry_of(reference: str) -> str:
    """The registry host of a reference (``docker.io`` when it names none), as skopeo reads it."""
    ref = reference.removeprefix("docker://")
    first, sep, _ = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _check_reference(reference: str) -> str:
    ref = reference.removeprefix("docker://")
    if not ref or any(c.isspace() for c in ref) or "://" in ref or ref.startswith(("/", "-")):
        raise ImageError(reference, "not an image reference (expected e.g. registry.example/ns/name:tag)")
    return ref


class ImageStore:
    """The node's image cache; ``insecure`` registries (host:port) are spoken to without TLS checks."""

    def __init__(
        self,
        cache_dir: Path,
        insecure: Collection[str] = (),
        skopeo: str = "skopeo",
        umoci: str = "umoci",
        timeout_s: float = 600.0,
    ) -> None:
        self.cache_dir = cache_dir
        self.insecure = frozenset(insecure)
        self.skopeo = skopeo
        self.umoci = umoci
        self.timeout_s = timeout_s
        self._inflight: dict[str, asyncio.Future[Image]] = {}

    async def pull(self, reference: str) -> Image:
        ref = _check_reference(reference)
        pending = self._inflight.get(ref)
        if pending is None:
            pending = asyncio.ensure_future(self._pull(reference, ref))
            self._inflight[ref] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(ref, None))
        # shield: one caller cancelled does not cancel the pull the others wait for.
        return await asyncio.shield(pending)

    async def rootfs(self, image: str) -> Path:
        """The unpacked root filesystem of ``image`` (the agent's ImageSource); ImageError if none."""
        return (await self.pull(image)).rootfs

    def cached(self) -> list[Path]:
        return sorted(p for p in self.cache_dir.glob("sha256-*") if (p / "image.json").is_file())

    def _tls(self, ref: str, flag: str) -> list[str]:
        return [f"{flag}=false"] if registry_of(ref) in self.insecure else []

    async def _tool(self, image: str, *argv: str) -> bytes:
        what = " ".join(a for a in argv[:3] if not a.startswith("-"))  # "skopeo inspect", "umoci unpack"
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except FileNotFoundError as exc:
            raise ImageError(image, f"{argv[0]} not found: install skopeo and umoci (`make setup`)") from exc
        try:
            async with asyncio.timeout(self.timeout_s):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ImageError(image, f"{what} took longer than {self.timeout_s:g} s") from None
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else f"exit {proc.returncode}"
            # skopeo logs as time=... level=fatal msg="..."; keep the message.
            if (at := last.find('msg="')) >= 0:
                last = last[at + 5 :].removesuffix('"').replace('\\"', '"')
            raise ImageError(image, f"{what} failed: {last}")
        return out

    async def _pull(self, reference: str, ref: str) -> Image:
        # --insecure-policy: no signature policy is enforced (none is configured for the registries).
        manifest = await self._tool(
            reference, self.skopeo, "--insecure-policy", "inspect", "--raw",
            *self._tls(ref, "--tls-verify"), f"docker://{ref}",
        )  # fmt: skip
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        final = self.cache_dir / digest.replace(":", "-")
        if (final / "image.json").is_file():
            return _load(reference, final)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=self.cache_dir))
        try:
            layout = f"oci:{tmp / 'layout'}:image"
            log.info("image pull", extra={"image": reference, "digest": digest})
            await self._tool(
                reference, self.skopeo, "--insecure-policy", "copy", "--quiet",
                *self._tls(ref, "--src-tls-verify"), f"docker://{ref}", layout,
            )  # fmt: skip
            bundle = tmp / "bundle"
            await self._tool(
                reference, self.umoci, "unpack", "--image", f"{tmp / 'layout'}:image", str(bundle)
            )
            if not (bundle / "rootfs").is_dir():
                raise ImageError(reference, f"umoci left no rootfs in {bundle}")
            record = {"reference": reference, "digest": digest}
            atomic_write(bundle / "image.json", json.dumps(record, indent=1).encode(), mode=0o644)
            try:
                bundle.rename(final)
            except OSError:
                if not (final / "image.json").is_file():  # another process won the race: use theirs
                    raise
            return _load(reference, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _load(reference: str, path: Path) -> Image:
    record = json.loads((path / "image.json").read_bytes())
    try:
        config: dict[str, Any] = json.loads((path / "config.json").read_bytes())
    except (OSError, ValueError):
        config = {}
    process = config.get("process") or {}
    return Image(
        reference=reference,
        digest=str(record["digest"]),
        rootfs=path / "rootfs",
        env=tuple(str(e) for e in process.get("env") or ()),
        cmd=tuple(str(a) for a in process.get("args") or ()),
    )
