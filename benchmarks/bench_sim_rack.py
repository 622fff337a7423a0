"""What the simulated rack of `make demo` costs while it idles: 14 nodes (`scalerunner sim up --nodes 14
--detach`), each an agent and two MicroPython firmwares, with the coordinator, mosquitto and the switch.

The CPU time of every process of the rack is read from /proc over a window once all nodes are online
and have settled; the figures are shares of the machine's cores (the physical limit): the share the
idle rack leaves free (measured 0.54-0.62 on 2 cores: `make test` runs beside a demo), and the share
each kind of process takes. No target: the firmware's tick rates set most of it (docs/sim.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure
from scalerunner.sim import procs

NODES = 14
SETTLE = 5.0
WINDOW = 15.0
SCALERUNNER = str(Path(sys.executable).with_name("scalerunner"))


def _kind(pid: int, supervisor: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return "gone"
    if pid == supervisor:
        return "supervisor (switch, coordinator, relays)"
    for key, kind in (
        ("bmc/main.py", "BMC firmware"),
        ("ledfw/main.py", "LED firmware"),
        ("scalerunner-agent", "node agents"),
        ("mosquitto", "mosquitto"),
    ):
        if key in cmd:
            return kind
    return "jobs and other"


def _ticks(root: Path, supervisor: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for pid, s in procs.scan().items():
        if s.session == supervisor or procs.mentions(pid, root):
            kind = _kind(pid, supervisor)
            out[kind] = out.get(kind, 0) + s.cpu_ticks
    return out


def run() -> list[Figure]:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        root = Path(tmp) / "rack"
        env = dict(os.environ, SCALERUNNER_HOME=str(Path(tmp) / "home"))
        up = subprocess.run(
            [SCALERUNNER, "sim", "up", "--nodes", str(NODES), "--detach", "--dir", str(root)],
            env=env,
            capture_output=True,
            text=True,
        )
        try:
            if up.returncode != 0:
                raise RuntimeError(f"sim up failed: {up.stdout[-2000:]} {up.stderr[-2000:]}")
            supervisor = int((root / "sim.pid").read_text().split()[0])
            time.sleep(SETTLE)
            a, ta = _ticks(root, supervisor), time.monotonic()
            time.sleep(WINDOW)
            b, tb = _ticks(root, supervisor), time.monotonic()
        finally:
            subprocess.run([SCALERUNNER, "sim", "down", "--dir", str(root)], env=env, capture_output=True)
    seconds = (tb - ta) * procs.CLOCK_TICKS
    share = {k: max(0, b[k] - a.get(k, 0)) / seconds for k in b}  # in cores
    used = sum(share.values())
    figures = [
        Figure(
            f"idle {NODES}-node sim rack: CPU left free",
            f"{(cores - used) * 100:.0f} % of {cores * 100} % (rack uses {used * 100:.0f} %)",
            f"{cores} cores",
            (cores - used) / cores,
        )
    ]
    for kind in sorted(share, key=lambda k: -share[k]):
        if kind == "gone":
            continue
        figures.append(
            Figure(f"  {kind}", f"{share[kind] * 100:.1f} % of a core", f"{cores} cores", share[kind] / cores)
        )
    return figures
