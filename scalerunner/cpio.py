"""newc ("070701") cpio archives, the format the Linux kernel unpacks into its initial rootfs.

Shared by the node agent's vm runtime (the job VM's initramfs) and the coordinator's network
boot (each node's settings initrd); neither imports the other, so the writer lives here.
Written by code, with fixed owners and times: the same entries always give the same bytes.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CpioEntry", "newc_archive"]


@dataclass(frozen=True, slots=True)
class CpioEntry:
    path: str  # inside the archive, without a leading slash
    mode: int  # full st_mode: type and permission bits
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """A newc ("070701") cpio archive, the format the kernel unpacks into its initial rootfs."""
    out = bytearray()
    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.path.encode() + b"\0"
        fields = (
            ino,
            entry.mode,
            0,  # uid
            0,  # gid
            2 if stat.S_ISDIR(entry.mode) else 1,
            0,  # mtime: fixed, so the same inputs give the same bytes
            len(entry.data),
            0,
            0,
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,  # check
        )
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += header + name
        out += _pad4(len(header) + len(name))
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)
