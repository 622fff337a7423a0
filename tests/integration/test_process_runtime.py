"""The process runtime with real processes: namespaces, rootfs, limits, timeout, cancel, output."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from scalerunner.nodeagent.runtime.base import JobEnd, JobResult, JobRun, RuntimeFault
from scalerunner.nodeagent.runtime.process import ProcessRuntime, result_of

pytestmark = pytest.mark.slow


class Collect:
    def __init__(self) -> None:
        self.out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.seen = asyncio.Event()

    def __call__(self, stream: str, data: bytes) -> None:
        self.out[stream] += data
        self.seen.set()

    def text(self, stream: str) -> str:
        return self.out[stream].decode()


def job(tmp_path: Path, *argv: str, **kw: object) -> JobRun:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return JobRun(job="j1", attempt=1, argv=argv, workdir=work, **kw)  # type: ignore[arg-type]


def run(j: JobRun, sink: Collect) -> JobResult:
    return asyncio.run(ProcessRuntime().run(j, sink))


def procs_with(marker: str) -> list[int]:
    """Host pids whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd:
            found.append(int(entry))
    return found


def scratch_left(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if p.name.startswith(".j1-")]


def test_exit_code_output_and_pid_namespace(tmp_path: Path) -> None:
    sink = Collect()
    j = job(tmp_path, "/bin/sh", "-c", "echo out; echo err >&2; echo $$; ls /proc | grep -c '^[0-9]'; exit 3")
    res = run(j, sink)
    assert res == JobResult(JobEnd.EXITED, 3)
    lines = sink.text("stdout").split()
    assert lines[0] == "out" and sink.text("stderr") == "err\n"
    assert int(lines[1]) < 10  # its own pid namespace: pids start again at 1
    assert int(lines[2]) <= 5  # its own /proc shows only the namespace's few processes
    assert scratch_left(tmp_path) == []


def test_runs_in_workdir_with_env(tmp_path: Path) -> None:
    sink = Collect()
    res = run(job(tmp_path, "/bin/sh", "-c", "pwd; echo $GREETING > made", env={"GREETING": "hej"}), sink)
    assert res.end is JobEnd.EXITED and res.exit_code == 0
    assert sink.text("stdout").strip() == str((tmp_path / "work").resolve())
    assert (tmp_path / "work" / "made").read_text() == "hej\n"


def test_output_is_streamed_as_it_comes(tmp_path: Path) -> None:
    # The job writes its second line only after the test has seen the first: output held back
    # until the end would hang here (and hit the timeout) instead.
    sink = Collect()
    script = "echo first; while [ ! -e go ]; do sleep 0.02; done; echo second"
    j = job(tmp_path, "/bin/sh", "-c", script, timeout_s=20)

    async def scenario() -> JobResult:
        task = asyncio.create_task(ProcessRuntime().run(j, sink))
        await asyncio.wait_for(sink.seen.wait(), 10)
        assert sink.text("stdout") == "first\n"
        (tmp_path / "work" / "go").touch()
        return await task

    assert asyncio.run(scenario()) == JobResult(JobEnd.EXITED, 0)
    assert sink.text("stdout") == "first\nsecond\n"


def test_timeout_kills_everything_and_exits_124(tmp_path: Path) -> None:
    marker = f"3{uuid.uuid4().int % 10**6:06d}"
    sink = Collect()
    start = time.monotonic()
    res = run(job(tmp_path, "/bin/sh", "-c", f"sleep {marker} & echo started; wait", timeout_s=1.0), sink)
    assert res.end is JobEnd.TIMEOUT and res.exit_code == 124
    assert time.monotonic() - start < 5
    assert sink.text("stdout") == "started\n"
    assert procs_with(f"sleep\0{marker}") == []
    assert scratch_left(tmp_path) == []


def test_cancel_kills_double_forked_grandchildren_and_removes_scratch(tmp_path: Path) -> None:
    marker = f"4{uuid.uuid4().int % 10**6:06d}"
    # setsid + a subshell that exits: the sleep is re-parented and leaves the job's session
    script = f"(setsid sleep {marker} > /dev/null 2>&1 &); echo forked; sleep {marker}1"
    j = job(tmp_path, "/bin/sh", "-c", script)
    sink = Collect()

    async def scenario() -> None:
        task = asyncio.create_task(ProcessRuntime().run(j, sink))
        await asyncio.wait_for(sink.seen.wait(), 5)
        await asyncio.sleep(0.1)
        assert procs_with(f"sleep\0{marker}\0")  # the daemon is there before the cancel
        assert scratch_left(tmp_path)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    deadline = time.monotonic() + 3
    while procs_with(f"sleep\0{marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs_with(f"sleep\0{marker}") == []
    assert scratch_left(tmp_path) == []


def test_a_finished_job_leaves_no_background_process(tmp_path: Path) -> None:
    marker = f"5{uuid.uuid4().int % 10**6:06d}"
    res = run(
        job(tmp_path, "/bin/sh", "-c", f"(setsid sleep {marker} > /dev/null 2>&1 &); exit 0"), Collect()
    )
    assert res.exit_code == 0
    deadline = time.monotonic() + 3
    while procs_with(f"sleep\0{marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs_with(f"sleep\0{marker}") == []


def test_without_cgroups_the_memory_limit_refuses_a_bigger_allocation(tmp_path: Path) -> None:
    py = shutil.which("python3") or "/usr/bin/python3"
    grab = "import sys; b = bytearray(int(sys.argv[1]) * 2**20); print('got')"
    runtime = ProcessRuntime(cgroup_backend=None)  # the fallback: ulimit -v only
    small = asyncio.run(runtime.run(job(tmp_path, py, "-c", grab, "8", memory_mb=128), Collect()))
    sink = Collect()
    big = asyncio.run(runtime.run(job(tmp_path, py, "-c", grab, "400", memory_mb=128), sink))
    assert small == JobResult(JobEnd.EXITED, 0)
    assert big.exit_code != 0 and "MemoryError" in sink.text("stderr")


def test_killed_by_a_signal_is_128_plus_n(tmp_path: Path) -> None:
    res = run(job(tmp_path, "/bin/sh", "-c", "kill -KILL $$"), Collect())
    assert res == JobResult(JobEnd.KILLED, 137, "killed by SIGKILL")


def test_result_of_tells_exit_from_signal() -> None:
    assert result_of(0) == JobResult(JobEnd.EXITED, 0)
    assert result_of(128) == JobResult(JobEnd.EXITED, 128)
    assert result_of(143).detail == "killed by SIGTERM"
    assert result_of(-9) == JobResult(JobEnd.KILLED, 137, "killed by SIGKILL")


def make_rootfs(root: Path) -> Path:
    """A tiny root filesystem: the host's /bin/sh and the libraries it links."""
    (root / "bin").mkdir(parents=True)
    sh = Path(os.path.realpath("/bin/sh"))
    shutil.copy2(sh, root / "bin" / "sh")
    ldd = subprocess.run(["ldd", str(sh)], capture_output=True, text=True, check=True).stdout
    for lib in re.findall(r"(/\S+)", ldd):
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)
    return root


def test_rootfs_is_the_jobs_root_and_stays_unchanged(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "image")
    before = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))
    script = (
        "echo $PWD; echo $HOME; [ -e /usr/bin ] && echo host || echo own; "
        "echo data > /work/result; echo scribble > /scribble; echo x > /dev/null && echo devnull; "
        "n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo procs $n"
    )
    sink = Collect()
    res = run(job(tmp_path, "/bin/sh", "-c", script, rootfs=rootfs), sink)
    assert res == JobResult(JobEnd.EXITED, 0), sink.text("stderr")
    assert sink.text("stdout").split("\n")[:4] == ["/work", "/work", "own", "devnull"]
    assert int(sink.text("stdout").split()[-1]) <= 4  # its own pid namespace, its own /proc
    assert (tmp_path / "work" / "result").read_text() == "data\n"
    assert sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*")) == before
    assert scratch_left(tmp_path) == []


def test_rootfs_without_the_command_is_a_job_failure_not_a_fault(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "image")
    res = run(job(tmp_path, "/no/such/tool", rootfs=rootfs), Collect())
    assert res.end is JobEnd.EXITED and res.exit_code != 0


def test_a_rootfs_that_is_not_unpacked_is_a_runtime_fault(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeFault, match=r"j1.*not unpacked"):
        run(job(tmp_path, "/bin/true", rootfs=tmp_path / "empty"), Collect())


def test_a_missing_unshare_is_a_runtime_fault(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFault, match="job j1: cannot start /no/unshare"):
        asyncio.run(ProcessRuntime(unshare="/no/unshare").run(job(tmp_path, "/bin/true"), Collect()))
