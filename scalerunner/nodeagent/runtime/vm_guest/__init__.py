"""What the vm runtime boots: Debian's cloud kernel and an initramfs built here.

The initramfs is a newc cpio archive written by code (no root, no ``find | cpio``): busybox-static
as the whole userland, the virtio modules the kernel lacks (disk, serial ports, and the NIC's for
jobs with network), and ``init.sh``/``enter.sh`` from this
directory. It is cached by the hash of its contents. Each job appends a small second archive
holding ``/job/run.sh`` (its argv and environment) and the work dir's content; the kernel unpacks
concatenated archives in order, so the cached part is never rewritten.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from scalerunner.atomic import fsync_dir
from scalerunner.cpio import CpioEntry, newc_archive  # shared with the coordinator's boot initrds

__all__ = [
    "MODULES",
    "NET_MODULES",
    "CpioEntry",
    "GuestError",
    "GuestKernel",
    "build_initramfs",
    "job_archive",
    "newc_archive",
    "shell_words",
    "work_entries",
    "write_job_initrd",
    "write_shared",
]

# Load order matters: dependencies first (docs/runtime-vm.md). ext4 and the 8250 console are built in.
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_console",
    "virtio_blk",
)
# The NIC's driver and what it needs, loaded by init only for a job with network (after MODULES).
NET_MODULES = ("failover", "net_failover", "virtio_net")
BUSYBOX = Path("/bin/busybox")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class GuestError(Exception):
    """The guest kernel or initramfs cannot be had; names the file and what to do."""


@dataclass(frozen=True, slots=True)
class GuestKernel:
    """An unpacked linux-image-*-cloud-amd64 package (tools/fetch-guest-kernel.sh)."""

    vmlinuz: Path
    modules: Path  # .../lib/modules/<release>

    @classmethod
    def find(cls, guest_dir: Path) -> GuestKernel:
        kernels = sorted(guest_dir.glob("linux-image-*/boot/vmlinuz-*"))
        if not kernels:
            raise GuestError(
                f"no guest kernel under {guest_dir}: run `bash tools/fetch-guest-kernel.sh` (make setup)"
            )
        vmlinuz = kernels[-1]
        release = vmlinuz.name.removeprefix("vmlinuz-")
        modules = vmlinuz.parent.parent / "lib" / "modules" / release
        if not modules.is_dir():
            raise GuestError(f"guest kernel {vmlinuz} has no modules at {modules}")
        return cls(vmlinuz=vmlinuz, modules=modules)

    def module(self, name: str) -> Path:
        found = sorted(self.modules.glob(f"kernel/**/{name}.ko"))
        if not found:
            raise GuestError(f"module {name}.ko not found under {self.modules}")
        return found[0]


def _script(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def _base_entries(kernel: GuestKernel, busybox: Path) -> list[CpioEntry]:
    d, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755
    entries = [
        CpioEntry(p, d) for p in ("bin", "dev", "proc", "sys", "mnt", "mnt/root", "lib", "lib/modules")
    ]
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", x, busybox.read_bytes()))
    entries.append(CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    entries.append(CpioEntry("init", x, _script("init.sh")))
    entries.append(CpioEntry("enter.sh", stat.S_IFREG | 0o644, _script("enter.sh")))
    for name in MODULES + NET_MODULES:
        entries.append(
            CpioEntry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, kernel.module(name).read_bytes())
        )
    return entries


def build_initramfs(kernel: GuestKernel, cache_dir: Path, busybox: Path = BUSYBOX) -> Path:
    """The cached initramfs for this kernel, busybox and init; built when any of them changed."""
    if not busybox.is_file():
        raise GuestError(f"{busybox} missing: install busybox-static (`make setup`)")
    archive = newc_archive(_base_entries(kernel, busybox))
    digest = hashlib.sha256(archive).hexdigest()[:16]
    path = cache_dir / f"initramfs-{digest}.cpio"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_shared(path, archive)
    return path


def write_shared(path: Path, data: bytes) -> None:
    """Write ``path`` whole through a temp file of its own: several agents or test runs may build
    the same cache file at once, and each must rename a complete file into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def shell_words(words: Sequence[str]) -> str:
    """``words`` quoted so that a POSIX shell (busybox sh) reads them back exactly."""
    return " ".join(shlex.quote(w) for w in words)


WORK_IN_MAX = 64 * 2**20  # a work dir bigger than this does not go into the guest's RAM


def work_entries(workdir: Path, job: str) -> list[CpioEntry]:
    """The work dir's content as ``job/work/...`` entries: directories, regular files and symlinks
    (kept as links; the guest copies them into its ``/work`` as they are). Anything else is refused,
    as is more than ``WORK_IN_MAX`` bytes: the archive is unpacked into the guest's memory."""
    entries = [CpioEntry("job/work", stat.S_IFDIR | 0o755)]
    total = 0
    for dirpath, dirnames, filenames in os.walk(workdir):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(workdir).as_posix()
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(path).encode()
                entries.append(CpioEntry(f"job/work/{rel}", stat.S_IFLNK | 0o777, data))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(CpioEntry(f"job/work/{rel}", stat.S_IFDIR | mode))
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                if total > WORK_IN_MAX:
                    raise ValueError(f"job {job}: work dir {workdir} holds more than {WORK_IN_MAX >> 20} MiB")
                entries.append(CpioEntry(f"job/work/{rel}", stat.S_IFREG | mode, path.read_bytes()))
            else:
                raise ValueError(f"job {job}: {path} in the work dir is not a file, directory or link")
    return entries


def job_archive(argv: Sequence[str], env: Mapping[str, str], job: str, workdir: Path | None = None) -> bytes:
    """The per-job archive appended to the initramfs: ``/job/run.sh`` for init.sh to source, and
    the work dir's content under ``/job/work``, which init copies into the job's ``/work``."""
    if not argv:
        raise ValueError(f"job {job}: empty command")
    if any("\0" in a for a in argv):
        raise ValueError(f"job {job}: NUL byte in the command")
    for key, value in env.items():
        if not _ENV_KEY.fullmatch(key):
            raise ValueError(f"job {job}: environment variable name {key!r} is not a shell name")
        if "\0" in value:
            raise ValueError(f"job {job}: NUL byte in environment variable {key}")
    script = (
        f"# job {shell_words([job])}\n"
        f"set -- {shell_words(argv)}\n"
        f"JOB_ENV={shlex.quote(shell_words([f'{k}={v}' for k, v in env.items()]))}\n"
    )
    work = work_entries(workdir, job) if workdir is not None else []
    return newc_archive(
        [
            CpioEntry("job", stat.S_IFDIR | 0o755),
            CpioEntry("job/run.sh", stat.S_IFREG | 0o644, script.encode()),
            *work,
        ]
    )


def write_job_initrd(base: Path, archive: bytes, dest: Path) -> None:
    """The job's initrd: the cached base followed by its own archive (4-byte aligned already)."""
    with base.open("rb") as src, dest.open("wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
        out.write(archive)
