"""``manifest.json``: what a built image is, next to its ``vmlinuz`` and ``initrd.img``.

It names the files with their sha256 (what the registry stores them by), the Debian suite and
every package version in the root, the agent's version and the cache keys of both layers (a
build with the same inputs reuses the output).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from ..atomic import atomic_write

__all__ = ["MANIFEST", "ImageFile", "KernelInfo", "Layer", "Manifest", "read_manifest", "write_manifest"]

MANIFEST = "manifest.json"
SCHEMA = 1


class ImageFile(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # vmlinuz, initrd.img
    sha256: str
    size: int


class KernelInfo(msgspec.Struct, frozen=True, kw_only=True):
    package: str  # e.g. linux-image-6.1.0-57-cloud-amd64
    version: str  # the package's version
    release: str  # uname -r


class Layer(msgspec.Struct, frozen=True, kw_only=True):
    """One zstd-compressed newc archive inside ``initrd.img`` (bytes ``offset`` to ``offset+size``):
    ``base`` the Debian root, ``agent`` the project and the boot scripts, unpacked over it."""

    name: str
    offset: int
    size: int


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    schema: int = SCHEMA
    arch: str
    suite: str
    mirrors: list[str]
    cmdline: str  # the kernel command line the image wants; the boot server appends scalerunner.*
    kernel: KernelInfo
    python: str  # the image's python3 version, e.g. 3.11
    agent_version: str
    files: list[ImageFile]
    packages: dict[str, str]  # Debian package -> version
    python_packages: dict[str, str]  # the agent's dependencies -> version
    base_key: str
    agent_key: str
    layers: list[Layer]
    source_date_epoch: int
    built_at: str  # ISO 8601, UTC
    build_seconds: float

    def file(self, name: str) -> ImageFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``; None when there is none or it is not one (a rebuild follows)."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=Manifest)
    except (OSError, msgspec.DecodeError):
        return None


def write_manifest(path: Path, manifest: Manifest) -> None:
    atomic_write(path, msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n", mode=0o644)
