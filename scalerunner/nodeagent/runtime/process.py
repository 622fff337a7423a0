"""The ``process`` runtime: a job as a subprocess in its own pid and mount (and network) namespaces.

For development and the simulated rack; same contract as ``vm`` (see base.py). The job runs
under util-linux ``unshare --pid --fork --mount --kill-child``: a small ``/bin/sh`` setup is pid
1 of the new pid namespace and runs the job as its child. When pid 1 dies the kernel kills every
process left in the namespace, so killing the ``unshare`` process (its child gets SIGKILL by
``--kill-child``) ends everything the job started, double-forked daemons included.

Why pid 1 is our shell and not the job: a namespace's init ignores signals it has no handler
for, and unshare 2.38 exits 1 (not 128+n) when its child dies by a signal. The shell reports a
signalled job as 128+n, like any shell.

With ``JobRun.rootfs`` the setup mounts an overlay (the image read-only below, a scratch upper
layer) so jobs never change the cached image, a fresh /proc, a small /dev (null, zero, full,
random, urandom, tty bound from the host) and the workdir at ``/work``, then chroots into it.
Without it the job sees the host's filesystem, with its own /proc, and runs in the workdir.

Limits: each job gets a control group (cgroups.py: v2 if it has the cpu, memory and pids
controllers, else v1) with a CPU quota of ``cpus`` cores, ``memory_mb`` (a job over it is killed
by the kernel and ends KILLED, "memory limit N MB reached") and ``pids_max``; every process of the
job is born inside it (``cgroups.JOIN`` runs before unshare), and a cancel or a timeout kills
every process in the group. Without cgroups (a warning is logged once) ``memory_mb`` is only the
address-space rlimit (``ulimit -v``: an allocation beyond it fails) and cpus and pids are not
enforced. There is no user namespace (the agent runs as root; mapping root to root would add
nothing). The timeout is enforced: SIGKILL to all, exit code 124.

Network: as in the ``vm`` runtime, a job reaches nothing it did not ask for. Without
``JobRun.network`` it also gets its own network namespace (``unshare --net``) holding only ``lo``,
which the setup brings up (``ip``, else busybox's ``ip``: the node image has only busybox), so
the job can still talk to itself on 127.0.0.1 but not to the node's loopback services (the
broker, the agent) or anything beyond. With ``network`` it shares the node's network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Literal

from . import cgroups
from .base import JobEnd, JobResult, JobRun, OutputSink, RuntimeFault, Stream

__all__ = ["SETUP", "ProcessRuntime", "result_of"]

log = logging.getLogger("scalerunner.nodeagent.runtime.process")

TIMEOUT_EXIT = 124
READ_SIZE = 64 * 1024
DRAIN_AFTER_KILL_S = 5.0  # the pipes close once the namespace is gone; bounded anyway
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# pid 1 of the job's namespaces. $1 rootfs ("" for the host's), $2 scratch, $3 workdir,
# $4 address-space limit in KiB (or unlimited), $5 "lo" in a network namespace of its own (bring
# lo up), "" on the node's network; then the job's argv. "ready" tells a failed setup (a runtime
# fault) from a failed job.
SETUP = r"""
set -e
rootfs=$1 scratch=$2 work=$3 kib=$4 net=$5
shift 5
if [ "$net" = lo ]; then
    if command -v ip > /dev/null; then ip link set lo up; else busybox ip link set lo up; fi
fi
if [ -z "$rootfs" ]; then
    mount -t proc proc /proc
    cd "$work"
    : > "$scratch/ready"
    set +e
    (ulimit -v "$kib" && exec "$@")
    exit $?
fi
root=$scratch/root
mkdir -p "$scratch/upper" "$scratch/ovl" "$root"
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$scratch/upper,workdir=$scratch/ovl" "$root"
mkdir -p "$root/proc" "$root/dev" "$root/work" "$root/tmp"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=755,size=64k,nosuid dev "$root/dev"
for d in null zero full random urandom tty; do
    : > "$root/dev/$d"
    mount --bind "/dev/$d" "$root/dev/$d"
done
mount --bind "$work" "$root/work"
: > "$scratch/ready"
set +e
(ulimit -v "$kib" && exec unshare --root="$root" --wd=/work -- "$@")
exit $?
"""


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def result_of(returncode: int) -> JobResult:
    """How a job ended, from the exit status pid 1 reported (the shell's 128+n for a signal)."""
    if returncode < 0:  # the unshare process itself was signalled (not by us: we never leave it)
        return JobResult(JobEnd.KILLED, 128 - returncode, f"killed by {_signal_name(-returncode)}")
    if 128 < returncode < 128 + 65:
        return JobResult(JobEnd.KILLED, returncode, f"killed by {_signal_name(returncode - 128)}")
    return JobResult(JobEnd.EXITED, returncode)


class ProcessRuntime:
    """``await run(job, sink)``; cancel the awaiting task to kill the job."""

    name = "process"

    def __init__(
        self,
        *,
        unshare: str = "unshare",
        shell: str = "/bin/sh",
        cgroup_backend: cgroups.CgroupBackend | Literal["auto"] | None = "auto",
    ) -> None:
        self._unshare = unshare
        self._shell = shell
        self._cgroups = cgroup_backend

    @property
    def cgroup_backend(self) -> cgroups.CgroupBackend | None:
        """The cgroup back end jobs run under (detected on first use), or None: ulimit only."""
        if self._cgroups == "auto":
            self._cgroups = cgroups.detect()
            if self._cgroups is None:
                log.warning("no usable cgroups: jobs get an address-space ulimit only, no cpu or pids limit")
            else:
                log.info("job limits by cgroup %s", self._cgroups.version)
        return self._cgroups

    def _argv(self, job: JobRun, scratch: Path, group: cgroups.JobCgroup | None = None) -> list[str]:
        rootfs = ""
        if job.rootfs is not None:
            rootfs = str(job.rootfs.resolve())
            if any(c in rootfs for c in ",:\n"):  # overlay's option syntax cannot quote them
                raise RuntimeFault(job.job, f"rootfs path {rootfs!r} has a ',' or ':'")
            if not (job.rootfs / "bin").exists() and not (job.rootfs / "usr").exists():
                raise RuntimeFault(job.job, f"rootfs {rootfs} has no bin/ or usr/: not unpacked?")
        kib = "unlimited" if group is not None else str(max(1, job.memory_mb) * 1024)
        join = [] if group is None else [self._shell, "-c", cgroups.JOIN, "cgjoin"]
        join += [str(f) for f in group.procs_files()] + ["--"] if group is not None else []
        return [
            *join,
            self._unshare,
            "--pid",
            "--fork",
            "--mount",
            "--propagation=private",
            *([] if job.network else ["--net"]),
            "--kill-child=SIGKILL",
            "--",
            self._shell,
            "-c",
            SETUP,
            "scalerunner-job",
            rootfs,
            str(scratch),
            str(job.workdir.resolve()),
            kib,
            "" if job.network else "lo",
            *job.argv,
        ]

    async def run(self, job: JobRun, sink: OutputSink) -> JobResult:
        if not job.argv:
            raise RuntimeFault(job.job, "empty command")
        if not job.workdir.is_dir():
            raise RuntimeFault(job.job, f"workdir {job.workdir} is not a directory")
        if shutil.which(self._unshare) is None:  # said here: behind the cgroup prelude it is exit 127
            raise RuntimeFault(job.job, f"cannot start {self._unshare}: not found")
        group: cgroups.JobCgroup | None = None
        if (backend := self.cgroup_backend) is not None:
            limits = cgroups.Limits(job.cpus, job.memory_mb, job.pids_max)
            try:
                group = backend.create(f"{job.job}-{job.attempt}", limits)
            except OSError as exc:
                raise RuntimeFault(job.job, f"cannot make its cgroup ({backend.version}): {exc}") from exc
        scratch = Path(tempfile.mkdtemp(prefix=f".{job.job}-{job.attempt}-rt-", dir=job.workdir.parent))
        try:
            result = await self._run(job, sink, scratch, group)
            if group is None:
                return result
            detail = result.detail
            if result.end is JobEnd.KILLED and group.oom_killed():
                detail = f"memory limit {job.memory_mb} MB reached"
            return JobResult(result.end, result.exit_code, detail, cpu_s=group.cpu_seconds())
        finally:
            if group is not None:
                await asyncio.shield(asyncio.to_thread(group.remove))  # kills what is left, then rmdir
            shutil.rmtree(scratch, ignore_errors=True)

    async def _run(
        self, job: JobRun, sink: OutputSink, scratch: Path, group: cgroups.JobCgroup | None
    ) -> JobResult:
        argv = self._argv(job, scratch, group)
        env = {"PATH": DEFAULT_PATH, "HOME": "/work" if job.rootfs else str(job.workdir), **job.env}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: one killpg reaches unshare and pid 1
            )
        except OSError as exc:
            raise RuntimeFault(job.job, f"cannot start {self._unshare}: {exc.strerror or exc}") from exc
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            asyncio.create_task(_pump(proc.stdout, "stdout", sink), name=f"job-{job.job}-stdout"),
            asyncio.create_task(_pump(proc.stderr, "stderr", sink), name=f"job-{job.job}-stderr"),
        ]
        log.info("job started", extra={"job": job.job, "attempt": job.attempt, "pid": proc.pid})
        try:
            try:
                returncode = await asyncio.wait_for(proc.wait(), job.timeout_s)
            except TimeoutError:
                await _kill(proc, group)
                await _drain(readers)
                log.warning("job timed out", extra={"job": job.job, "timeout_s": job.timeout_s})
                return JobResult(JobEnd.TIMEOUT, TIMEOUT_EXIT, f"timeout after {job.timeout_s:g} s")
            await _drain(readers)
        except BaseException:
            # cancelled (or the sink raised): nothing the job started may outlive this call
            await asyncio.shield(_kill(proc, group))
            for r in readers:
                r.cancel()
            raise
        if not (scratch / "ready").exists():
            raise RuntimeFault(
                job.job, f"namespace setup failed (exit {returncode}; its stderr is in the job's log)"
            )
        return result_of(returncode)


async def _pump(stream: asyncio.StreamReader, name: Stream, sink: OutputSink) -> None:
    while data := await stream.read(READ_SIZE):
        sink(name, data)


async def _drain(readers: list[asyncio.Task[None]]) -> None:
    """Wait for the output to end (every writer gone); a reader still blocked is cancelled."""
    done, pending = await asyncio.wait(readers, timeout=DRAIN_AFTER_KILL_S)
    for r in pending:
        r.cancel()
    for r in done:
        r.result()  # a sink that raised is the caller's bug: let it show


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


async def _kill(proc: asyncio.subprocess.Process, group: cgroups.JobCgroup | None = None) -> None:
    """SIGKILL every process in the job's cgroup; then unshare, its pid 1 (whose death empties the
    namespace) and their process group, which is all there is to kill without a cgroup."""
    if group is not None:
        await asyncio.to_thread(group.kill)
    if proc.returncode is None:
        for pid in _children(proc.pid):  # pid 1 in the namespace; --kill-child would do it too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
