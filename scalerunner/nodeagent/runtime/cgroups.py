"""Per-job control groups: the ``process`` runtime's CPU, memory and pids limits, and its kill switch.

One small interface, ``CgroupBackend.create`` -> ``JobCgroup``, and two back ends:

- ``v2``: the unified hierarchy, when it offers the ``cpu``, ``memory`` and ``pids`` controllers
  (``cpu.max``, ``memory.max`` with ``memory.swap.max`` 0, ``pids.max``; ``cgroup.kill``).
- ``v1``: one directory per controller hierarchy (``cpu.cfs_quota_us``, ``memory.limit_in_bytes``
  and ``memory.memsw.limit_in_bytes``, ``pids.max``; ``cpuacct.usage``), which is what these
  machines offer: their v2 mount carries only hugetlb (docs/agent.md, "Resource limits").

``detect()`` picks v2 if it has the three controllers, else v1 if its hierarchies are mounted and
writable, else none (the caller logs a warning and falls back to ``ulimit``). The job's groups are
made below the agent's own group in each hierarchy (read from /proc/self/cgroup), under
``scalerunner-jobs/``, so an agent that is itself confined confines its jobs inside its share.

Placement: the runtime starts the job through ``JOIN``, a shell prelude that writes 0 (itself) to
each ``cgroup.procs`` before it execs the job, so every process of the job is born inside. Cancel
and timeout kill through the group (every process in it), and ``remove()`` deletes it after.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["JOIN", "CgroupBackend", "JobCgroup", "Limits", "V1Backend", "V2Backend", "detect", "parse_mounts"]

log = logging.getLogger("scalerunner.nodeagent.runtime.cgroups")

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")  # v1 hierarchies used; v2 needs cpu, memory, pids
PERIOD_US = 100_000
BASE = "scalerunner-jobs"

# argv prefix: sh -c JOIN cgjoin PROCS... -- CMD...: join each group, then exec the command.
JOIN = r'while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift; exec "$@"'


@dataclass(frozen=True, slots=True)
class Limits:
    cpus: float  # CPU time per wall second, in cores (0.5: half a core)
    memory_mb: int
    pids: int


class JobCgroup(Protocol):
    name: str

    def procs_files(self) -> list[Path]:
        """The ``cgroup.procs`` files a process writes itself into to join (one per hierarchy)."""
        ...

    def pids(self) -> set[int]: ...

    def kill(self) -> None:
        """SIGKILL every process in the group, until it is empty (or a few seconds have passed)."""
        ...

    def cpu_seconds(self) -> float:
        """CPU time used by the group's processes so far."""
        ...

    def oom_killed(self) -> bool:
        """The kernel killed a process of the group for going over its memory limit."""
        ...

    def remove(self) -> None: ...


class CgroupBackend(Protocol):
    version: str

    def create(self, name: str, limits: Limits) -> JobCgroup:
        """A new group with ``limits``; OSError if the kernel refuses."""
        ...


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100] + f"-{os.getpid()}-{os.urandom(3).hex()}"


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _read_pids(files: list[Path]) -> set[int]:
    out: set[int] = set()
    for f in files:
        with contextlib.suppress(OSError):
            out |= {int(p) for p in f.read_text().split()}
    return out


def _kill_all(files: list[Path], grace: float = 5.0) -> None:
    deadline = time.monotonic() + grace
    while (pids := _read_pids(files)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _rmdir(path: Path, grace: float = 5.0) -> None:
    """rmdir a group; EBUSY while its last processes are being reaped, so retry a little."""
    deadline = time.monotonic() + grace
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                log.warning("cannot remove cgroup %s: %s", path, exc, extra={"path": str(path)})
                return
            time.sleep(0.02)


# -- v1 ----------------------------------------------------------------------------------------------


@dataclass
class V1Group:
    name: str
    dirs: dict[str, Path]  # controller -> the group's directory in its hierarchy

    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in dict.fromkeys(self.dirs.values())]

    def pids(self) -> set[int]:
        return _read_pids(self.procs_files())

    def kill(self) -> None:
        _kill_all(self.procs_files())

    def cpu_seconds(self) -> float:
        return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9

    def oom_killed(self) -> bool:
        text = (self.dirs["memory"] / "memory.oom_control").read_text()
        m = re.search(r"^oom_kill (\d+)", text, re.M)
        if m is not None:
            return int(m.group(1)) > 0
        return int((self.dirs["memory"] / "memory.failcnt").read_text()) > 0  # kernels before 4.13

    def remove(self) -> None:
        self.kill()
        for d in dict.fromkeys(self.dirs.values()):
            _rmdir(d)


class V1Backend:
    version = "v1"

    def __init__(self, roots: dict[str, Path]) -> None:
        self.roots = roots  # controller -> where the agent's job groups go in its hierarchy

    def create(self, name: str, limits: Limits) -> V1Group:
        group = V1Group(_safe(name), {})
        try:
            for ctrl, root in self.roots.items():
                d = root / group.name
                if d not in group.dirs.values():
                    d.mkdir(parents=True)
                group.dirs[ctrl] = d
            cpu, mem = group.dirs["cpu"], group.dirs["memory"]
            _write(cpu / "cpu.cfs_period_us", str(PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(max(1000, round(limits.cpus * PERIOD_US))))
            limit = str(limits.memory_mb * 1024 * 1024)
            _write(mem / "memory.limit_in_bytes", limit)
            if (mem / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit either
                _write(mem / "memory.memsw.limit_in_bytes", limit)
            _write(group.dirs["pids"] / "pids.max", str(limits.pids))
        except OSError:
            group.remove()
            raise
        return group


# -- v2 ----------------------------------------------------------------------------------------------


@dataclass
class V2Group:
    name: str
    dir: Path

    def procs_files(self) -> list[Path]:
        return [self.dir / "cgroup.procs"]

    def pids(self) -> set[int]:
        return _read_pids(self.procs_files())

    def kill(self) -> None:
        with contextlib.suppress(OSError):  # cgroup.kill: Linux 5.14 and later
            _write(self.dir / "cgroup.kill", "1")
        _kill_all(self.procs_files())

    def cpu_seconds(self) -> float:
        for line in (self.dir / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        return 0.0

    def oom_killed(self) -> bool:
        for line in (self.dir / "memory.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value) > 0
        return False

    def remove(self) -> None:
        self.kill()
        _rmdir(self.dir)


class V2Backend:
    version = "v2"

    def __init__(self, root: Path) -> None:
        self.root = root  # the agent's job groups' parent, below the agent's own group

    def create(self, name: str, limits: Limits) -> V2Group:
        if not self.root.exists():
            # the controllers must be enabled on the way down: in the agent's group, then below it
            _write(self.root.parent / "cgroup.subtree_control", "+cpu +memory +pids")
            self.root.mkdir()
            _write(self.root / "cgroup.subtree_control", "+cpu +memory +pids")
        group = V2Group(_safe(name), self.root / _safe(name))
        group.dir.mkdir()
        try:
            _write(group.dir / "cpu.max", f"{max(1000, round(limits.cpus * PERIOD_US))} {PERIOD_US}")
            _write(group.dir / "memory.max", str(limits.memory_mb * 1024 * 1024))
            if (group.dir / "memory.swap.max").exists():
                _write(group.dir / "memory.swap.max", "0")
            _write(group.dir / "pids.max", str(limits.pids))
        except OSError:
            group.remove()
            raise
        return group


# -- detection ---------------------------------------------------------------------------------------


def parse_mounts(mounts: str) -> tuple[Path | None, dict[str, Path]]:
    """From /proc/self/mounts: the cgroup2 mount point, and each v1 controller's mount point."""
    v2: Path | None = None
    v1: dict[str, Path] = {}
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        _dev, where, fstype, options = parts[:4]
        if fstype == "cgroup2" and v2 is None:
            v2 = Path(where)
        elif fstype == "cgroup":
            for opt in options.split(","):
                if opt in CONTROLLERS:
                    v1[opt] = Path(where)
    return v2, v1


def parse_own(cgroup: str) -> tuple[str, dict[str, str]]:
    """From /proc/self/cgroup: this process's v2 path and its v1 path per controller."""
    v2 = "/"
    v1: dict[str, str] = {}
    for line in cgroup.splitlines():
        _id, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if ctrls == "":
            v2 = path
        for c in ctrls.split(","):
            if c:
                v1[c] = path
    return v2, v1


def detect(mounts: str | None = None, own: str | None = None) -> V2Backend | V1Backend | None:
    """The cgroup back end this machine offers to the agent, or None."""
    mounts = Path("/proc/self/mounts").read_text() if mounts is None else mounts
    own = Path("/proc/self/cgroup").read_text() if own is None else own
    v2_mount, v1_mounts = parse_mounts(mounts)
    own_v2, own_v1 = parse_own(own)
    if v2_mount is not None:
        here = v2_mount / own_v2.lstrip("/")
        with contextlib.suppress(OSError):
            available = set((here / "cgroup.controllers").read_text().split())
            if {"cpu", "memory", "pids"} <= available and os.access(here, os.W_OK):
                return V2Backend(here / BASE)
    if set(CONTROLLERS) <= set(v1_mounts):
        roots = {c: v1_mounts[c] / own_v1.get(c, "/").lstrip("/") / BASE for c in CONTROLLERS}
        if all(os.access(r.parent, os.W_OK) for r in roots.values()):
            return V1Backend(roots)
    return None
