"""The process runtime's cgroup limits with real processes: pids, CPU quota, memory; removal after the job.

Runs on whatever ``cgroups.detect()`` finds (cgroup v1 on these machines); skipped where there is none.
CPU use is read from the job's own cgroup (``JobResult.cpu_s``), not inferred from wall time.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from scalerunner.nodeagent.runtime import cgroups
from scalerunner.nodeagent.runtime.base import JobEnd, JobResult, JobRun
from scalerunner.nodeagent.runtime.process import ProcessRuntime

pytestmark = pytest.mark.slow

BACKEND = cgroups.detect()
needs_cgroups = pytest.mark.skipif(BACKEND is None, reason="no usable cgroup v1 or v2 here")


class Collect:
    def __init__(self) -> None:
        self.out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def __call__(self, stream: str, data: bytes) -> None:
        self.out[stream] += data


def _job(tmp_path: Path, name: str, script: str, **kw: object) -> JobRun:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return JobRun(job=name, attempt=1, argv=("/bin/sh", "-c", script), workdir=work, **kw)  # type: ignore[arg-type]


def _groups_left(name: str) -> list[Path]:
    """Directories of job ``name``'s cgroups still in any hierarchy."""
    assert BACKEND is not None
    roots = BACKEND.roots.values() if isinstance(BACKEND, cgroups.V1Backend) else [BACKEND.root]
    return [d for root in roots if root.is_dir() for d in root.iterdir() if d.name.startswith(name + "-")]


@needs_cgroups
def test_a_job_forking_200_sleeps_under_pids_50_cannot_fork_and_leaves_nothing(tmp_path: Path) -> None:
    name = f"pids{time.monotonic_ns() % 10**6}"
    script = "i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done; echo all-forked"
    sink = Collect()
    res = asyncio.run(ProcessRuntime().run(_job(tmp_path, name, script, pids_max=50, timeout_s=30), sink))
    assert res.exit_code != 0 and b"all-forked" not in sink.out["stdout"]
    assert b"fork" in sink.out["stderr"].lower(), sink.out["stderr"]
    assert _groups_left(name) == []  # the group (and every sleep in it) is gone


@needs_cgroups
def test_two_busy_loops_with_cpus_half_use_at_most_half_a_core_and_are_throttled(tmp_path: Path) -> None:
    """The quota, by the group's own accounting: CPU time from cpuacct (v1) or cpu.stat (v2), and
    the kernel's count of periods in which it throttled the group. On a loaded machine two loops may
    get less than half a core anyway, so the throttle count is what shows the quota at work."""
    assert BACKEND is not None
    group = BACKEND.create(
        f"cpu{time.monotonic_ns() % 10**6}", cgroups.Limits(cpus=0.5, memory_mb=64, pids=16)
    )
    busy = "while :; do :; done"
    argv = ["/bin/sh", "-c", cgroups.JOIN, "cgjoin", *map(str, group.procs_files()), "--"]
    proc = subprocess.Popen([*argv, "/bin/sh", "-c", f"({busy}) & {busy}"])
    try:
        t0 = time.monotonic()
        time.sleep(2.0)
        used, wall = group.cpu_seconds(), time.monotonic() - t0
        assert len(group.pids()) == 2  # the shell and its subshell, each in a loop, both inside
        cpu_dir = group.dirs["cpu"] if isinstance(group, cgroups.V1Group) else group.dir
        stat = dict(line.split() for line in (cpu_dir / "cpu.stat").read_text().splitlines())
    finally:
        group.remove()  # kills every process in it
        proc.wait(5)
    assert used <= 0.5 * wall + 0.15, (used, wall)
    assert used > 0.05, (used, wall)
    assert int(stat["nr_throttled"]) > 0, stat


@needs_cgroups
def test_a_jobs_cpu_time_is_reported_and_never_more_than_its_cpus(tmp_path: Path) -> None:
    name = f"cpuj{time.monotonic_ns() % 10**6}"
    busy = "while :; do :; done"
    job = _job(tmp_path, name, f"({busy}) & {busy}", cpus=0.5, timeout_s=2.0)
    t0 = time.monotonic()
    res = asyncio.run(ProcessRuntime().run(job, Collect()))
    wall = time.monotonic() - t0
    assert res.end is JobEnd.TIMEOUT and res.cpu_s is not None
    assert 0.0 < res.cpu_s <= 0.5 * wall + 0.15, (res.cpu_s, wall)
    assert _groups_left(name) == []


@needs_cgroups
def test_a_job_over_its_memory_limit_is_killed_with_a_clear_result(tmp_path: Path) -> None:
    name = f"mem{time.monotonic_ns() % 10**6}"
    py = shutil.which("python3") or "/usr/bin/python3"
    grab = (
        "import sys; b = bytearray(int(sys.argv[1]) * 2**20); b[::4096] = b'x' * len(b[::4096]); print('got')"
    )
    run = ProcessRuntime().run
    small = asyncio.run(run(_job(tmp_path, name, f'{py} -c "{grab}" 16', memory_mb=128), Collect()))
    big = asyncio.run(run(_job(tmp_path, name, f'{py} -c "{grab}" 400', memory_mb=128), Collect()))
    assert small == JobResult(JobEnd.EXITED, 0)
    assert big == JobResult(JobEnd.KILLED, 137, "memory limit 128 MB reached")
    assert _groups_left(name) == []


def test_detection_reads_v1_hierarchies_and_the_agents_own_groups() -> None:
    mounts = (
        "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
        "cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
        "cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n"
    )
    v2, v1 = cgroups.parse_mounts(mounts)
    assert v2 == Path("/sys/fs/cgroup/unified")
    assert v1 == {c: Path(f"/sys/fs/cgroup/{c}") for c in ("cpu", "cpuacct", "memory", "pids")}
    own_v2, own_v1 = cgroups.parse_own("4:memory:/agents/a1\n2:cpu,cpuacct:/\n0::/\n")
    assert own_v2 == "/" and own_v1 == {"memory": "/agents/a1", "cpu": "/", "cpuacct": "/"}
    comounted = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
    assert cgroups.parse_mounts(comounted)[1] == {
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
    }


def test_no_cgroup_mounts_means_no_back_end() -> None:
    assert cgroups.detect(mounts="proc /proc proc rw 0 0\n", own="0::/\n") is None


def test_v2_groups_get_quota_memory_swap_and_pids_written(tmp_path: Path) -> None:
    # a v2 hierarchy as files (these machines have no v2 controllers to run it on)
    own = tmp_path / "agent"
    own.mkdir()
    (own / "cgroup.subtree_control").write_text("")
    backend = cgroups.V2Backend(own / cgroups.BASE)
    real_mkdir = Path.mkdir

    def mkdir_with_files(self: Path, *a: object, **kw: object) -> None:
        real_mkdir(self, *a, **kw)  # type: ignore[arg-type]
        for f in ("cgroup.subtree_control", "memory.swap.max", "cgroup.procs"):
            (self / f).write_text("")

    mp = pytest.MonkeyPatch()
    mp.setattr(Path, "mkdir", mkdir_with_files)
    try:
        group = backend.create("j7-1", cgroups.Limits(cpus=1.5, memory_mb=64, pids=50))
    finally:
        mp.undo()
    assert (own / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (group.dir / "cpu.max").read_text() == "150000 100000"
    assert (group.dir / "memory.max").read_text() == str(64 * 2**20)
    assert (group.dir / "memory.swap.max").read_text() == "0"
    assert (group.dir / "pids.max").read_text() == "50"
    assert group.procs_files() == [group.dir / "cgroup.procs"]
