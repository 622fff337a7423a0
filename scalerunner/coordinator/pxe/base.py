"""What the network-boot parts agree on: an image as the boot server sees it, and where
its files come from.

The registry (``registry``) stores images; the boot HTTP server (``http``), the TFTP tree
(``tftp``/``raspi``) and the iPXE scripts only read them through ``ImageSource``, so each can
be tested with a small in-memory source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

FileRole = Literal["kernel", "initrd", "dtb", "firmware"]
ROLES: tuple[FileRole, ...] = ("kernel", "initrd", "dtb", "firmware")


@dataclass(frozen=True)
class BootFile:
    """One file of an image: its name as nodes ask for it (``vmlinuz``, ``start4.elf``,
    ``bcm2711-rpi-4-b.dtb``; no ``/``), what it is, and its content (sha256, hex)."""

    name: str
    role: FileRole
    digest: str
    size: int


@dataclass(frozen=True)
class BootImage:
    """One version of one image. ``cmdline`` is the kernel command line template: ``{node}``,
    ``{mac}`` and ``{url}`` are filled in per node, and the boot server always appends the
    ``scalerunner.url=``, ``scalerunner.node=`` and ``scalerunner.token=`` keys."""

    name: str
    version: str
    arch: str
    cmdline: str
    files: tuple[BootFile, ...]

    def role(self, role: FileRole) -> tuple[BootFile, ...]:
        return tuple(f for f in self.files if f.role == role)

    @property
    def kernel(self) -> BootFile | None:
        found = self.role("kernel")
        return found[0] if found else None

    def file(self, name: str) -> BootFile | None:
        return next((f for f in self.files if f.name == name), None)


class ImageSource(Protocol):
    """Which image a node boots and where the bytes are."""

    async def resolve(self, node: str, arch: str, group: str) -> BootImage | None:
        """The image ``node`` boots now: its per-node override, else the version promoted to
        its ``group`` for its ``arch``; None if there is none."""
        ...

    def blob_path(self, digest: str) -> Path:
        """The file holding content ``digest`` (read-only); KeyError if it is not stored."""
        ...
