"""The ``vm`` runtime: every job attempt in a fresh QEMU VM, destroyed afterwards.

The guest is Debian's cloud kernel with the initramfs from ``vm_guest`` (busybox init). The job's
root filesystem goes in as an ext4 disk made per job with ``mke2fs -d`` (Debian 12 has no
virtiofsd and the kernel no 9p, and a copy keeps the cached image clean). stdout, stderr, a tar
of the job's /work (for artifacts) and the exit status come back over virtio-serial ports, each a
unix socket this process listens on before QEMU starts; the guest states how many bytes each
port carried and powers off only when the host has them all. Scratch files live in one temp
directory that is removed however the run ends (timeout, cancel, fault).

A job with ``network`` gets a virtio NIC on QEMU's user-mode network (slirp: NAT by the QEMU
process, no root, no bridge). The host's loopback is 10.0.2.2 there, so URLs in the job's env that
name the node's loopback are rewritten to it (``guest_env``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import tarfile
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scalerunner.nodeagent.runtime.base import JobEnd, JobResult, JobRun, OutputSink, RuntimeFault
from scalerunner.nodeagent.runtime.kvm import KvmProbe
from scalerunner.nodeagent.runtime.vm_guest import (
    GuestError,
    GuestKernel,
    build_initramfs,
    job_archive,
    write_job_initrd,
)

__all__ = [
    "DEFAULT_GUEST_DIR",
    "GuestStatus",
    "VmConfig",
    "VmRuntime",
    "guest_env",
    "guest_url",
    "parse_status",
    "qemu_argv",
]

log = logging.getLogger("scalerunner.nodeagent.runtime.vm")

# tools/fetch-guest-kernel.sh unpacks the kernel here (`make setup`); git-ignored.
DEFAULT_GUEST_DIR = Path(
    os.environ.get("SCALERUNNER_GUEST_DIR", Path(__file__).resolve().parents[3] / ".cache" / "guest")
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The job runs in /work (as under the process runtime); its contents come back to JobRun.workdir.
GUEST_OVERHEAD_MB = 64  # the guest kernel and initramfs, on top of the job's memory
PORTS: tuple[str, ...] = ("stdout", "stderr", "work", "status")
DISK_SLACK_MB = 64  # free space the job gets on its root filesystem
# QEMU user-mode networking's fixed plan: the guest is 10.0.2.15, the host (its 127.0.0.1) 10.0.2.2.
SLIRP_HOST = "10.0.2.2"
# 0.0.0.0 too: a coordinator listening on every address names it in its URLs, and on the node
# a connection to it reaches the node itself.
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "0.0.0.0"})


@dataclass(frozen=True, slots=True)
class VmConfig:
    guest_dir: Path = DEFAULT_GUEST_DIR
    qemu: str = "qemu-system-x86_64"
    mke2fs: str = "mke2fs"
    accel: str = "auto"  # "auto" probes KVM once (kvm.py); "tcg" or "kvm" forces one
    kvm_probe_timeout_s: float = 8.0
    scratch_dir: Path | None = None  # where per-job temp dirs go; None: the system's temp dir
    extra_disk_mb: int = DISK_SLACK_MB
    kvm_device: Path = field(default=Path("/dev/kvm"))


def qemu_argv(
    cfg: VmConfig, accel: str, job: JobRun, vmlinuz: Path, initrd: Path, disk: Path, sockets: dict[str, Path]
) -> list[str]:
    """The QEMU command line for one job (pure, so it can be read and tested on its own)."""
    argv = [
        cfg.qemu,
        *("-machine", f"q35,accel={accel}", "-nodefaults", "-no-user-config", "-no-reboot"),
        *("-m", str(job.memory_mb + GUEST_OVERHEAD_MB), "-smp", str(max(1, math.ceil(job.cpus)))),
        *("-display", "none", "-serial", f"file:{disk.parent / 'console.log'}"),
        *("-kernel", str(vmlinuz), "-initrd", str(initrd)),
        *("-append", "console=ttyS0 quiet loglevel=3 panic=-1"),
        *("-drive", f"file={disk},format=raw,if=virtio,cache=unsafe"),
        *("-device", "virtio-serial-pci,id=vser"),
    ]
    for i, port in enumerate(PORTS):
        argv += ["-chardev", f"socket,id=c{i},path={sockets[port]}"]
        argv += ["-device", f"virtserialport,bus=vser.0,chardev=c{i},name=scalerunner.{port}"]
    if job.network:
        # Unrestricted slirp: the guest reaches what the node reaches (GitHub, the coordinator);
        # romfile= skips the NIC's PXE option ROM, which a -kernel boot never uses.
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,romfile="]
        i = argv.index("-append") + 1
        argv[i] += " scalerunner.net=1"
    return argv


def guest_url(value: str) -> str:
    """``value`` with a loopback host (127.0.0.1, localhost, 0.0.0.0) replaced by the slirp host address,
    if it is a URL (``scheme://host...``); anything else unchanged. [::1] is not rewritten: slirp
    forwards 10.0.2.2 to the host's IPv4 loopback only."""
    try:
        parts = urllib.parse.urlsplit(value)
        host = parts.hostname
    except ValueError:
        return value
    if not parts.scheme or not parts.netloc or host is None or host.lower() not in _LOOPBACK_HOSTS:
        return value
    # Splice the new host into the text as given (urlunsplit would drop an empty "?" or "#").
    head = f"{parts.scheme}://{parts.netloc}"
    if value[: len(head)].lower() != head.lower():  # stray whitespace or control characters
        return value
    userinfo, at, hostport = parts.netloc.rpartition("@")
    port = hostport[len(host) :]  # ":PORT" or "" (hostname is the lower-cased host part)
    return f"{value[: len(parts.scheme)]}://{userinfo}{at}{SLIRP_HOST}{port}{value[len(head) :]}"


def guest_env(env: Mapping[str, str], network: bool) -> dict[str, str]:
    """The job's environment as the guest sees it: with network, loopback URLs point at the node
    (the coordinator's claim URL on a one-machine rack, say); without, it is left as given."""
    return {k: guest_url(v) for k, v in env.items()} if network else dict(env)


@dataclass(frozen=True, slots=True)
class GuestStatus:
    """The status port's line: ``exit N out=B err=B work=B`` or ``fault MESSAGE``."""

    code: int | None
    fault: str = ""
    sizes: dict[str, int] = field(default_factory=dict)  # bytes each port carried: stdout, stderr, work


_SIZE_KEYS = {"out": "stdout", "err": "stderr", "work": "work"}


def parse_status(text: str) -> GuestStatus | None:
    """The first complete status line in ``text``; None while there is none."""
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            return None
        verb, _, rest = line.strip().partition(" ")
        if verb == "fault":
            return GuestStatus(None, rest.strip() or "unknown fault")
        words = rest.split()
        if verb == "exit" and words and words[0].isdigit():
            sizes = {}
            for word in words[1:]:
                key, _, value = word.partition("=")
                if key in _SIZE_KEYS and value.isdigit():
                    sizes[_SIZE_KEYS[key]] = int(value)
            return GuestStatus(int(words[0]), sizes=sizes)
    return None


class _Ports:
    """The host ends of the guest's virtio-serial ports: output to the sink, /work to a tar file,
    and the status line, answered with ``ack`` once every port has delivered what the guest sent."""

    def __init__(self, sink: OutputSink, work_tar: Path) -> None:
        self.sink = sink
        self.received = {"stdout": 0, "stderr": 0, "work": 0}
        self.status: GuestStatus | None = None
        self._status_text = bytearray()
        self._arrived = asyncio.Event()
        self._work = work_tar.open("wb")
        self.tasks: list[asyncio.Task[None]] = []

    def handler(self, port: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.tasks.append(task)
            try:
                while chunk := await reader.read(65536):
                    if port == "status":
                        await self._on_status(chunk, writer)
                        continue
                    self.received[port] += len(chunk)
                    if port == "work":
                        self._work.write(chunk)
                    else:
                        self.sink("stdout" if port == "stdout" else "stderr", chunk)
                    self._arrived.set()
            finally:
                writer.close()

        return handle

    async def _on_status(self, chunk: bytes, writer: asyncio.StreamWriter) -> None:
        if self.status is not None:
            return
        self._status_text += chunk
        self.status = parse_status(self._status_text.decode(errors="replace"))
        if self.status is None or self.status.code is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                while any(self.received[p] < n for p, n in self.status.sizes.items()):
                    self._arrived.clear()
                    await self._arrived.wait()
        writer.write(b"ack\n")
        await writer.drain()

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self._work.close()


class VmRuntime:
    """Runs each job in its own QEMU VM; see the module docstring and docs/runtime-vm.md."""

    name = "vm"

    def __init__(self, config: VmConfig | None = None) -> None:
        self.config = config or VmConfig()
        self._probe = KvmProbe(
            self.config.guest_dir / "kvm-probe.json", self.config.kvm_device, self.config.kvm_probe_timeout_s
        )

    def _guest(self, job: JobRun) -> tuple[GuestKernel, Path]:
        try:
            kernel = GuestKernel.find(self.config.guest_dir)
            return kernel, build_initramfs(kernel, self.config.guest_dir)
        except (GuestError, OSError) as exc:
            raise RuntimeFault(job.job, f"vm guest: {exc}") from exc

    async def accel(self, job: JobRun) -> str:
        if self.config.accel != "auto":
            return self.config.accel
        kernel, initrd = self._guest(job)
        return await self._probe.accel(self.config.qemu, kernel.vmlinuz, initrd)

    async def run(self, job: JobRun, sink: OutputSink) -> JobResult:
        if job.rootfs is None or not job.rootfs.is_dir():
            raise RuntimeFault(job.job, f"vm runtime needs the image's root filesystem, got {job.rootfs}")
        if shutil.which(self.config.qemu) is None:
            raise RuntimeFault(
                job.job, f"{self.config.qemu} not found: install qemu-system-x86 (`make setup`)"
            )
        kernel, base_initrd = self._guest(job)
        env = {"PATH": DEFAULT_PATH, "HOME": "/work", **guest_env(job.env, job.network)}
        try:
            archive = await asyncio.to_thread(job_archive, job.argv, env, job.job, job.workdir)
        except (ValueError, OSError) as exc:
            raise RuntimeFault(job.job, str(exc)) from exc
        accel = await self.accel(job)
        if self.config.scratch_dir is not None:
            self.config.scratch_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="sr-vm-", dir=self.config.scratch_dir))
        try:
            return await self._run_in(scratch, accel, job, sink, kernel, base_initrd, archive)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def _make_disk(self, job: JobRun, rootfs: Path, disk: Path) -> None:
        used = await asyncio.to_thread(_tree_bytes, rootfs)
        used += await asyncio.to_thread(_tree_bytes, job.workdir)  # copied into /work by init
        size_mb = math.ceil(used * 1.2 / 2**20) + self.config.extra_disk_mb
        proc = await asyncio.create_subprocess_exec(
            self.config.mke2fs, "-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d", str(rootfs),
            str(disk), f"{size_mb}M",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:  # cancelled: mke2fs goes too
                proc.kill()
                await asyncio.shield(proc.wait())
        if proc.returncode != 0:
            raise RuntimeFault(job.job, f"mke2fs -d {rootfs} failed: {out.decode(errors='replace').strip()}")

    async def _run_in(
        self,
        scratch: Path,
        accel: str,
        job: JobRun,
        sink: OutputSink,
        kernel: GuestKernel,
        base_initrd: Path,
        archive: bytes,
    ) -> JobResult:
        assert job.rootfs is not None
        disk, initrd = scratch / "root.ext4", scratch / "initrd.cpio"
        await self._make_disk(job, job.rootfs, disk)
        await asyncio.to_thread(write_job_initrd, base_initrd, archive, initrd)
        sockets = {port: scratch / f"{port}.sock" for port in PORTS}
        if len(bytes(sockets["status"])) > 100:  # sun_path holds 108 bytes
            raise RuntimeFault(job.job, f"scratch dir {scratch} is too deep for unix socket paths")
        ports = _Ports(sink, scratch / "work.tar")
        servers: list[asyncio.Server] = []
        proc: asyncio.subprocess.Process | None = None
        try:
            for port, path in sockets.items():
                servers.append(await asyncio.start_unix_server(ports.handler(port), path=str(path)))
            argv = qemu_argv(self.config, accel, job, kernel.vmlinuz, initrd, disk, sockets)
            log.info(
                "vm start",
                extra={"job": job.job, "attempt": job.attempt, "accel": accel, "network": job.network},
            )
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
            assert proc.stderr is not None
            qemu_err = asyncio.ensure_future(proc.stderr.read())
            try:
                async with asyncio.timeout(job.timeout_s):
                    await proc.wait()
            except TimeoutError:
                return JobResult(JobEnd.TIMEOUT, 124, f"timeout after {job.timeout_s:g} s (VM killed)")
            finally:
                if proc.returncode is None:  # timed out or cancelled: QEMU goes, whatever it was doing
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await asyncio.shield(proc.wait())
            # QEMU has exited: each socket reaches its end; give the readers a moment to drain it.
            stderr = b""
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*ports.tasks, return_exceptions=True)
                    stderr = await qemu_err
        finally:
            for server in servers:
                server.close()
            ports.close()
        status = ports.status
        if status is not None and status.code is not None:
            detail = await asyncio.to_thread(_unpack_work, scratch / "work.tar", job.workdir)
            if status.code > 128:
                return JobResult(JobEnd.KILLED, status.code, f"killed by signal {status.code - 128}{detail}")
            return JobResult(JobEnd.EXITED, status.code, detail.removeprefix("; "))
        console = _tail(scratch / "console.log")
        cause = f"guest: {status.fault}" if status else stderr.decode(errors="replace").strip()
        cause = cause or "guest ended without an exit status"
        raise RuntimeFault(
            job.job,
            f"vm (qemu exit {proc.returncode}): {cause}" + (f"; console: {console}" if console else ""),
        )


def _unpack_work(tar: Path, workdir: Path) -> str:
    """Put the guest's /work into the attempt's workdir (for artifacts); a note when it fails."""
    if not tar.exists() or tar.stat().st_size == 0:
        return ""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar) as archive:
            archive.extractall(workdir, filter="data")  # no absolute paths, links out, devices
    except (OSError, tarfile.TarError) as exc:
        return f"; /work not returned: {exc}"
    return ""


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += 4096 * (len(dirnames) + 1)
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size + 4096
    return total


def _tail(path: Path, limit: int = 400) -> str:
    try:
        text = path.read_bytes()[-limit:].decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())
