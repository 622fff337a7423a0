"""The runtime interface: how the agent runs one job attempt, whatever it runs it in.

Back ends: ``process`` (a namespaced subprocess, for development and the simulated rack) and
``vm`` (a fresh QEMU VM per job, the container's root filesystem inside it). Both keep the same
contract, so the agent and its tests do not care which one ran a job:

- ``run`` returns when the job is over, with how it ended; it never raises for the job's own
  failure (a non-zero exit, a timeout, a limit hit), only ``RuntimeFault`` when the runtime itself
  could not run it (no image, QEMU missing) -- the coordinator tells a bench fault from a failed job.
- The timeout is enforced here, on the node; the coordinator only backstops it.
- Cancelling the task that awaits ``run`` kills everything the job started and removes its scratch
  files (the VM and its disks too) before the cancellation propagates.
- Output reaches ``sink`` in order, per stream, as it comes; the agent numbers and ships it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

__all__ = ["JobEnd", "JobResult", "JobRun", "OutputSink", "Runtime", "RuntimeFault"]

Stream = Literal["stdout", "stderr"]
OutputSink = Callable[[Stream, bytes], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRun:
    """One attempt of one job, as the node runs it."""

    job: str  # the job id, named in every error
    attempt: int  # 1-based
    argv: tuple[str, ...]  # what to run (a script is run as ("/bin/sh", "-c", script))
    env: Mapping[str, str] = field(default_factory=dict)
    cpus: float = 1.0
    memory_mb: int = 256
    pids_max: int = 1024  # processes and threads at once (a cgroup's pids.max)
    timeout_s: float = 3600.0
    rootfs: Path | None = None  # the unpacked container root filesystem; None: the host's (process only)
    workdir: Path  # scratch for this attempt; artifacts are collected from here after the run
    network: bool = False  # vm: a NIC (user-mode NAT); process: the node's network (else only its own lo)


class JobEnd(enum.Enum):
    EXITED = "exited"  # the command ran to its end; see exit_code
    TIMEOUT = "timeout"
    KILLED = "killed"  # by a signal or a limit (memory)


@dataclass(frozen=True, slots=True)
class JobResult:
    end: JobEnd
    exit_code: int  # the command's own code; 128+signal when killed; 124 on timeout (like timeout(1))
    detail: str = ""  # "memory limit 256 MB reached", "killed by SIGKILL", ...
    cpu_s: float | None = field(default=None, compare=False)  # CPU time the job used, where measured


class RuntimeFault(Exception):
    """The runtime could not run the job at all (not the job's fault). Names the job and the cause."""

    def __init__(self, job: str, message: str) -> None:
        super().__init__(f"job {job}: {message}")
        self.job = job


class Runtime(Protocol):
    name: str

    async def run(self, job: JobRun, sink: OutputSink) -> JobResult: ...
