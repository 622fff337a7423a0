"""The ``vm`` runtime: every job attempt in a fresh QEMU VM, destroyed afterwards.

The guest is Debian's cloud kernel with the initramfs from ``vm_guest`` (busybox init). The job's
root filesystem goes in as an ext4 disk made per job with ``mke2fs -d`` (this QEMU has no
virtiofsd and the kernel no 9p, and a copy keeps the cached image clean). stdout, stderr and the
exit status come back over three virtio-serial ports, each a unix socket this process listens on
before QEMU starts, so nothing the guest writes is lost. Scratch files live in one temp directory
that is removed however the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from scalerunner.nodeagent.runtime.base import JobEnd, JobResult, JobRun, OutputSink, RuntimeFault, Stream
from scalerunner.nodeagent.runtime.kvm import KvmProbe
from scalerunner.nodeagent.runtime.vm_guest import (
    GuestError,
    GuestKernel,
    build_initramfs,
    job_archive,
    write_job_initrd,
)

__all__ = ["DEFAULT_GUEST_DIR", "VmConfig", "VmRuntime", "qemu_argv"]

log = logging.getLogger("scalerunner.nodeagent.runtime.vm")

# tools/fetch-guest-kernel.sh unpacks the kernel here (`make setup`); git-ignored.
DEFAULT_GUEST_DIR = Path(
    os.environ.get("SCALERUNNER_GUEST_DIR", Path(__file__).resolve().parents[3] / ".cache" / "guest")
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_OVERHEAD_MB = 64  # the guest kernel and initramfs, on top of the job's memory
PORTS: tuple[str, ...] = ("stdout", "stderr", "status")
DISK_SLACK_MB = 64  # free space the job gets on its root filesystem


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
    return argv


def _parse_status(text: str) -> tuple[int | None, str]:
    """The status port's last line: ``exit N`` or ``fault MESSAGE``."""
    for line in reversed(text.strip().splitlines()):
        verb, _, rest = line.partition(" ")
        if verb == "exit" and rest.strip().isdigit():
            return int(rest), ""
        if verb == "fault":
            return None, rest.strip()
    return None, ""


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
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", **job.env}
        try:
            archive = job_archive(job.argv, env, job.job)
        except ValueError as exc:
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
        size_mb = math.ceil(used * 1.2 / 2**20) + self.config.extra_disk_mb
        proc = await asyncio.create_subprocess_exec(
            self.config.mke2fs, "-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d", str(rootfs),
            str(disk), f"{size_mb}M",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
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
        status = bytearray()
        readers: list[asyncio.Task[None]] = []

        def on_connect(port: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                task = asyncio.current_task()
                assert task is not None
                readers.append(task)
                try:
                    while chunk := await reader.read(65536):
                        if port == "status":
                            status.extend(chunk)
                        else:
                            stream: Stream = "stdout" if port == "stdout" else "stderr"
                            sink(stream, chunk)
                finally:
                    writer.close()

            return handle

        servers = [await asyncio.start_unix_server(on_connect(p), path=str(s)) for p, s in sockets.items()]
        argv = qemu_argv(self.config, accel, job, kernel.vmlinuz, initrd, disk, sockets)
        log.info("vm start", extra={"job": job.job, "attempt": job.attempt, "accel": accel})
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        assert proc.stderr is not None
        qemu_err = asyncio.ensure_future(proc.stderr.read())
        timed_out = False
        stderr = b""
        try:
            try:
                async with asyncio.timeout(job.timeout_s):
                    await proc.wait()
            except TimeoutError:
                timed_out = True
                proc.kill()
                await proc.wait()
            # QEMU has exited: each socket reaches its end; give the readers a moment to drain it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*readers, return_exceptions=True)
                    stderr = await qemu_err
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(proc.wait())
            for server in servers:
                server.close()
            for task in readers:
                task.cancel()
            qemu_err.cancel()
        if timed_out:
            return JobResult(JobEnd.TIMEOUT, 124, f"timeout after {job.timeout_s:g} s (VM killed)")
        code, fault = _parse_status(status.decode(errors="replace"))
        if code is not None:
            if code > 128:
                return JobResult(JobEnd.KILLED, code, f"killed by signal {code - 128}")
            return JobResult(JobEnd.EXITED, code)
        console = _tail(scratch / "console.log")
        cause = f"guest: {fault}" if fault else stderr.decode(errors="replace").strip()
        cause = cause or "guest ended without an exit status"
        raise RuntimeFault(
            job.job,
            f"vm (qemu exit {proc.returncode}): {cause}" + (f"; console: {console}" if console else ""),
        )


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
