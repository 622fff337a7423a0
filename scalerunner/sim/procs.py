"""Processes as /proc shows them: a node's CPU use (its agent and the agent's jobs) for the switch's
load model, and what a stopped rack may have left behind (`scalerunner sim down` checks it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str  # R, S, D, Z (zombie: gone but not yet reaped), ...
    ppid: int
    pgrp: int
    session: int
    cpu_ticks: int  # utime + stime


def parse_stat(text: str) -> ProcStat:
    """One /proc/PID/stat line. The command name (field 2) is in parentheses and may itself hold
    blanks and parentheses, so the fields are counted from its last ``)``."""
    head, sep, rest = text.rpartition(")")
    if not sep:
        raise ValueError(f"not a /proc stat line: {text[:60]!r}")
    pid = int(head.split("(", 1)[0])
    f = rest.split()
    # rest[0] is field 3 (state): ppid=4, pgrp=5, session=6, utime=14, stime=15
    return ProcStat(pid, f[0], int(f[1]), int(f[2]), int(f[3]), int(f[11]) + int(f[12]))


def scan(proc: Path = Path("/proc")) -> dict[int, ProcStat]:
    out = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            out[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or a kernel thread's odd line
    return out


def descendants(stats: dict[int, ProcStat], root: int) -> set[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for s in stats.values():
        children.setdefault(s.ppid, []).append(s.pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found & stats.keys()


def tree_ticks(stats: dict[int, ProcStat], root: int) -> int:
    return sum(stats[p].cpu_ticks for p in descendants(stats, root))


def mentions(pid: int, where: Path) -> bool:
    """Whether process ``pid`` names ``where`` in an argument or works under ``where/nodes`` (the
    agents' job directories; a user's shell sitting in ``where`` itself is not the rack's)."""
    base, nodes = str(where), str(where / "nodes")
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        if cwd == nodes or cwd.startswith(nodes + "/"):
            return True
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # whole paths only: /x/rack must not match /x/rack2
    parts = (p for a in argv for p in a.decode(errors="replace").split("="))
    return any(p == base or p.startswith(base + "/") for p in parts)


def leftovers(session: int | None, where: Path) -> list[int]:
    """Processes of the supervisor's session, or of the rack's directory as ``mentions`` says
    (mosquitto and the jobs run in sessions of their own), except this process."""
    me = os.getpid()
    where = where.resolve()
    out = []
    for pid, s in scan().items():
        if pid == me or s.state == "Z":
            continue
        if (session is not None and s.session == session) or mentions(pid, where):
            out.append(pid)
    return sorted(out)
