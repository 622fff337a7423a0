"""The vm runtime boots real QEMU guests (TCG here: KVM hangs on these machines)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from scalerunner.nodeagent.images import ImageStore
from scalerunner.nodeagent.runtime.base import JobEnd, JobResult, JobRun, RuntimeFault
from scalerunner.nodeagent.runtime.kvm import KvmProbe, boot_reaches_userland
from scalerunner.nodeagent.runtime.vm import VmConfig, VmRuntime
from scalerunner.nodeagent.runtime.vm_guest import GuestKernel, build_initramfs
from tests.integration.oci_fixtures import MARKER, Registry, busybox_rootfs, registry  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.vm]


class Output:
    def __init__(self) -> None:
        self.streams: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.seen = asyncio.Event()

    def __call__(self, stream: str, data: bytes) -> None:
        self.streams[stream] += data
        self.seen.set()

    def text(self, stream: str) -> str:
        return self.streams[stream].decode()


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_rootfs(tmp_path_factory.mktemp("vmroot") / "rootfs")


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "scratch"
    yield path
    assert not any(path.iterdir()), f"VM scratch left behind: {list(path.iterdir())}"


def qemu_pids_under(path: Path) -> list[int]:
    """QEMU processes whose command line names ``path`` (only this test's VMs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmdline and str(path).encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def job(rootfs: Path, tmp_path: Path, *argv: str, **kw: object) -> JobRun:
    return JobRun(job="job-vm-1", attempt=1, argv=argv, rootfs=rootfs, workdir=tmp_path, **kw)  # type: ignore[arg-type]


def test_a_job_writes_stdout_and_stderr_sees_its_env_and_returns_its_exit_code_and_work(
    rootfs: Path, scratch: Path, tmp_path: Path
) -> None:
    out = Output()
    script = (
        'echo "out $GREETING"; echo err >&2; cat /etc/marker; echo "pid $$ in $(pwd)";'
        " echo result > result.txt; mkdir -p sub; echo deep > sub/f; exit 3"
    )
    workdir = tmp_path / "work"
    spec = job(rootfs, workdir, "sh", "-c", script, env={"GREETING": "hello  world"}, timeout_s=120)
    result = asyncio.run(VmRuntime(VmConfig(accel="tcg", scratch_dir=scratch)).run(spec, out))
    assert (result.end, result.exit_code, result.detail) == (JobEnd.EXITED, 3, "")
    # pid 1: its own pid namespace; the marker: inside the job's root filesystem; /work: its cwd.
    assert out.text("stdout") == f"out hello  world\n{MARKER}\npid 1 in /work\n"
    assert out.text("stderr") == "err\n"
    # What the job left in /work is in the attempt's workdir, for the artifacts.
    assert (workdir / "result.txt").read_text() == "result\n"
    assert (workdir / "sub" / "f").read_text() == "deep\n"


def test_work_starts_with_the_work_dirs_content_and_the_vm_has_the_jobs_cpus_and_memory(
    rootfs: Path, scratch: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    (workdir / "in" / "deep").mkdir(parents=True)
    (workdir / "checks.json").write_text('{"checks": []}\n')
    (workdir / "in" / "deep" / "tool.sh").write_text("echo tool ran\n")
    (workdir / "in" / "deep" / "tool.sh").chmod(0o755)
    (workdir / "link").symlink_to("in/deep/tool.sh")
    script = (
        "cat checks.json; ./link; readlink link; test -x in/deep/tool.sh && echo executable;"
        " nproc; awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo"
    )
    out = Output()
    spec = job(rootfs, workdir, "sh", "-c", script, cpus=1.5, memory_mb=192, timeout_s=120)
    result = asyncio.run(VmRuntime(VmConfig(accel="tcg", scratch_dir=scratch)).run(spec, out))
    assert (result.end, result.exit_code) == (JobEnd.EXITED, 0), out.text("stderr")
    lines = out.text("stdout").splitlines()
    assert lines[:4] == ['{"checks": []}', "tool ran", "in/deep/tool.sh", "executable"]
    # -smp ceil(1.5) = 2; -m 192 + 64 MiB, less what the guest kernel keeps for itself
    assert lines[4] == "2"
    assert 192 <= int(lines[5]) <= 256, lines


def test_a_large_output_arrives_whole(rootfs: Path, scratch: Path, tmp_path: Path) -> None:
    out = Output()
    # 4 MB through stdout, then exit at once: the guest powers off only after the host has it all.
    spec = job(rootfs, tmp_path / "work", "sh", "-c", "cat /bin/busybox /bin/busybox", timeout_s=120)
    result = asyncio.run(VmRuntime(VmConfig(accel="tcg", scratch_dir=scratch)).run(spec, out))
    assert (result.end, result.exit_code) == (JobEnd.EXITED, 0)
    assert bytes(out.streams["stdout"]) == 2 * (rootfs / "bin" / "busybox").read_bytes()


def test_the_timeout_kills_the_vm_and_reports_124(rootfs: Path, scratch: Path, tmp_path: Path) -> None:
    out = Output()
    spec = job(rootfs, tmp_path, "sh", "-c", "echo started; sleep 600; echo never", timeout_s=6)
    result = asyncio.run(VmRuntime(VmConfig(accel="tcg", scratch_dir=scratch)).run(spec, out))
    assert (result.end, result.exit_code) == (JobEnd.TIMEOUT, 124)
    assert "never" not in out.text("stdout")
    assert qemu_pids_under(scratch) == []


def test_cancelling_the_run_kills_qemu_and_removes_its_scratch(
    rootfs: Path, scratch: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        out = Output()
        spec = job(rootfs, tmp_path, "sh", "-c", "echo started; sleep 600", timeout_s=300)
        task = asyncio.create_task(VmRuntime(VmConfig(accel="tcg", scratch_dir=scratch)).run(spec, out))
        async with asyncio.timeout(120):
            await out.seen.wait()
        assert out.text("stdout") == "started\n"
        assert len(qemu_pids_under(scratch)) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert qemu_pids_under(scratch) == []

    asyncio.run(scenario())


def test_the_image_pulled_from_the_registry_is_what_runs(
    registry: Registry,  # noqa: F811
    scratch: Path,
    tmp_path: Path,
) -> None:
    ref = registry.push_busybox(tmp_path / "build", "test/vm:1", marker="pulled-from-the-registry")

    async def scenario() -> tuple[JobResult, str]:
        image = await ImageStore(tmp_path / "images", insecure={registry.host}).pull(ref)
        env = dict(e.split("=", 1) for e in image.env)
        out = Output()
        spec = job(image.rootfs, tmp_path, "sh", "-c", "cat /etc/marker; echo $IMAGE_VAR", env=env)
        result = await VmRuntime(VmConfig(accel="tcg", scratch_dir=scratch)).run(spec, out)
        return result, out.text("stdout")

    result, stdout = asyncio.run(scenario())
    assert (result.end, result.exit_code) == (JobEnd.EXITED, 0)
    assert stdout == "pulled-from-the-registry\nfrom-image\n"


def test_a_qemu_that_cannot_start_is_a_runtime_fault_naming_the_job(
    rootfs: Path, scratch: Path, tmp_path: Path
) -> None:
    spec = job(rootfs, tmp_path, "true", memory_mb=64 * 2**30)  # 64 PiB: QEMU refuses to allocate it
    with pytest.raises(RuntimeFault, match=r"job job-vm-1: vm \(qemu exit 1\): .*memory") as info:
        asyncio.run(VmRuntime(VmConfig(accel="tcg", scratch_dir=scratch)).run(spec, Output()))
    assert info.value.job == "job-vm-1"


def test_the_probe_tells_a_booting_guest_from_a_hanging_one(tmp_path: Path) -> None:
    cfg = VmConfig()
    kernel = GuestKernel.find(cfg.guest_dir)
    initrd = build_initramfs(kernel, cfg.guest_dir)
    assert asyncio.run(boot_reaches_userland(cfg.qemu, "tcg", kernel.vmlinuz, initrd, timeout_s=120))
    # Too short a time to boot stands in for KVM's hang: the probe gives up and kills QEMU.
    assert not asyncio.run(boot_reaches_userland(cfg.qemu, "tcg", kernel.vmlinuz, initrd, timeout_s=0.3))


def test_without_a_usable_kvm_device_the_probe_says_tcg_and_remembers(tmp_path: Path) -> None:
    probe = KvmProbe(tmp_path / "probe.json", device=tmp_path / "no-kvm", timeout_s=60)
    assert asyncio.run(probe.accel("qemu-system-x86_64", Path("k"), Path("i"))) == "tcg"
    cache = tmp_path / "probe.json"
    assert json.loads(cache.read_text()) == {"qemu-system-x86_64|k": False}
    # The answer is read back, not probed again: a cached "usable" is believed.
    cache.write_text(json.dumps({"qemu-system-x86_64|k": True}))
    assert asyncio.run(probe.accel("qemu-system-x86_64", Path("k"), Path("i"))) == "kvm"
