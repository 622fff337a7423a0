"""VM job overhead under TCG: submit to first log line through the vm runtime, against a bare boot.

The peer is the least any VM job can cost here: ``qemu -kernel`` of the same guest kernel with the
same initramfs in probe mode, timed from launch to the init's first line on the serial console.
The job path adds what the runtime does per job: the ext4 disk from the root filesystem (mke2fs
-d), the job's initrd, the virtio modules, the mount, the namespaces and the chroot. The ratio is
job / bare, so 1.0 would be free; the runs alternate so that load from other work hits both.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rich.progress import Progress

from benchmarks.common import Figure
from scalerunner.nodeagent.runtime.base import JobRun
from scalerunner.nodeagent.runtime.kvm import PROBE_MARKER
from scalerunner.nodeagent.runtime.vm import VmConfig, VmRuntime
from scalerunner.nodeagent.runtime.vm_guest import GuestKernel, build_initramfs

RUNS = 3


async def _bare_boot(cfg: VmConfig, kernel: GuestKernel, initrd: Path) -> float:
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        cfg.qemu, "-machine", "q35,accel=tcg", "-m", "128", "-nodefaults", "-no-user-config",
        "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(kernel.vmlinuz),
        "-initrd", str(initrd), "-append", "console=ttyS0 quiet panic=-1 scalerunner.probe",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = b""
    try:
        while chunk := await proc.stdout.read(4096):
            seen += chunk
            if PROBE_MARKER in seen:
                return time.perf_counter() - start
        raise RuntimeError("bare boot ended without the probe marker")
    finally:
        proc.kill()
        await proc.wait()


async def _job_first_line(runtime: VmRuntime, rootfs: Path, workdir: Path) -> float:
    first = asyncio.Event()
    job = JobRun(job="bench-vm", attempt=1, argv=("echo", "first"), rootfs=rootfs, workdir=workdir)
    start = time.perf_counter()
    at = 0.0

    def sink(_stream: str, _data: bytes) -> None:
        nonlocal at
        if not first.is_set():
            at = time.perf_counter() - start
            first.set()

    result = await runtime.run(job, sink)
    if not first.is_set() or result.exit_code != 0:
        raise RuntimeError(f"bench job failed: {result}")
    return at


def _rootfs(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    os.symlink("busybox", root / "bin" / "echo")
    return root


def run() -> list[Figure]:
    cfg = VmConfig(accel="tcg")
    kernel = GuestKernel.find(cfg.guest_dir)
    initrd = build_initramfs(kernel, cfg.guest_dir)
    bare: list[float] = []
    job: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp, Progress(transient=True) as progress:
        rootfs = _rootfs(Path(tmp) / "rootfs")
        runtime = VmRuntime(cfg)
        task = progress.add_task("TCG boots (bare, job)", total=2 * RUNS)
        for _ in range(RUNS):
            bare.append(asyncio.run(_bare_boot(cfg, kernel, initrd)))
            progress.advance(task)
            job.append(asyncio.run(_job_first_line(runtime, rootfs, Path(tmp))))
            progress.advance(task)
    b, j = statistics.median(bare), statistics.median(job)
    return [
        Figure(
            name="vm job: submit to first log line (TCG, busybox image)",
            measured=f"{j:.2f} s (median of {RUNS})",
            against=f"bare qemu -kernel boot to first output {b:.2f} s",
            ratio=j / b,
        )
    ]
