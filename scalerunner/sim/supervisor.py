"""Running a simulated rack in the background and stopping it: the supervisor's pid file in the rack's
directory, and a stop that leaves no process behind (`scalerunner sim down`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import procs
from .rack import SimRack

PID_FILE = "sim.pid"


def pid_path(root: Path) -> Path:
    return root / PID_FILE


def write_pid(root: Path) -> None:
    """``PID SESSION``: the session is the supervisor's own when `sim up --detach` started it, and then
    everything the rack started without a session of its own is in it."""
    root.mkdir(parents=True, exist_ok=True)
    pid_path(root).write_text(f"{os.getpid()} {os.getsid(0)}\n")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return procs.parse_stat(Path(f"/proc/{pid}/stat").read_text()).state != "Z"
    except (OSError, ValueError, IndexError):
        return False


def running(root: Path) -> tuple[int, int] | None:
    """(pid, session) of the rack's supervisor if it runs; a stale pid file counts as none."""
    try:
        words = pid_path(root).read_text().split()
        pid, session = int(words[0]), int(words[1])
    except (OSError, ValueError, IndexError):
        return None
    return (pid, session) if alive(pid) else None


def read_status(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def serve(rack: SimRack, stop: asyncio.Event, started: Callable[[], None] | None = None) -> None:
    """Run ``rack`` until ``stop`` is set, with the pid file present meanwhile."""
    write_pid(rack.root)
    try:
        await rack.start()
        if started is not None:
            started()
        await stop.wait()
    finally:
        try:
            await rack.stop()
        finally:
            with contextlib.suppress(FileNotFoundError):
                pid_path(rack.root).unlink()


def stop(root: Path, timeout: float = 60.0, tick: Callable[[str], None] | None = None) -> list[int]:
    """Stop the rack in ``root``: SIGTERM to its supervisor (which stops the nodes, the coordinator and
    its mosquitto, and the switch), then SIGKILL to whatever is left. Returns the pids killed."""
    root = root.resolve()
    found = running(root)
    session = None
    if found is not None:
        pid, sid = found
        session = sid if sid == pid else None  # a foreground `sim up` shares its shell's session
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            if tick is not None:
                tick("stopping the rack")
            time.sleep(0.2)
    killed = []
    for _ in range(3):
        left = procs.leftovers(session, root)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.3)
    with contextlib.suppress(FileNotFoundError):
        pid_path(root).unlink()
    return killed
