"""Power-cycling a full farm: all 42 node ports at once through the power manager, end to end.

The simulated PoE switch (``scalerunner sim switch``, a real SNMP agent) runs in its own process;
the manager cycles every port in parallel over SNMP v2c: off, poll until the port stops
delivering power, hold ``min_off``, on, poll until it delivers again. The physical limit of one
such round is ``min_off`` plus the switch's own settle time (the simulated switch settles at
once), whatever the number of ports; the figure is that limit over the time measured (1.0 would
be no overhead at all). A single port cycled alone is shown beside it, so the cost of 42 at once
is told apart from the cost of one.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.progress import Progress

from benchmarks.common import Figure
from scalerunner.coordinator.inventory import Inventory, inventory_from_dict
from scalerunner.coordinator.power.backends import build_backends
from scalerunner.coordinator.power.manager import PowerManager
from scalerunner.coordinator.power.results import exit_code
from scalerunner.coordinator.power.sequence import Op, SequenceConfig

PORTS = 42
MIN_OFF = 1.0
SWITCH_SETTLE = 0.0  # the simulated switch changes detection status in the SET itself
ROUNDS = 3
CONFIG = SequenceConfig(min_off=MIN_OFF, off_timeout=10, on_timeout=10, poll_interval=0.05)


def _inventory(port: int) -> Inventory:
    nodes = [
        {"name": f"n{p:02d}", "mac": f"02:00:00:00:01:{p:02x}", "arch": "arm64", "switch": "sw1", "port": p}
        for p in range(1, PORTS + 1)
    ]
    switch = {
        "name": "sw1",
        "address": "127.0.0.1",
        "port": port,
        "profile": "scalerunner-sim",
        "snmp": {"version": "2c", "community": "bench"},
    }
    return inventory_from_dict(
        {"cluster": {"name": "bench"}, "switches": [switch], "nodes": nodes}, "/tmp/bench.toml"
    )


async def _rounds(port: int, nodes: list[str], progress: Progress, label: str) -> float:
    """The best of ROUNDS cycles of ``nodes`` in parallel, seconds."""
    inv = _inventory(port)
    pm = PowerManager(inv, build_backends(inv), config=CONFIG)
    await pm.start()
    best = float("inf")
    task = progress.add_task(label, total=ROUNDS)
    try:
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            results = await pm.bulk(nodes, Op.CYCLE)
            took = time.perf_counter() - t0
            if exit_code(results):
                failed = "; ".join(r.message for r in results if not r.ok)
                raise RuntimeError(f"bench_power: cycle failed: {failed}")
            best = min(best, took)
            progress.advance(task)
    finally:
        await pm.stop()
    return best


def run() -> list[Figure]:
    cli = str(Path(sys.executable).with_name("scalerunner"))  # the console script beside python
    agent = subprocess.Popen(
        [cli, "sim", "switch", "--ports", "48", "--listen", "127.0.0.1:0", "--community", "bench"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ},
    )
    try:
        assert agent.stdout is not None
        line = agent.stdout.readline().decode().strip()  # udp:HOST:PORT once it listens
        if not line.startswith("udp:"):
            raise RuntimeError(f"bench_power: the simulated switch did not start ({line!r})")
        port = int(line.rsplit(":", 1)[1])
        nodes = [f"n{p:02d}" for p in range(1, PORTS + 1)]
        with Progress(transient=True) as progress:
            one = asyncio.run(_rounds(port, nodes[:1], progress, "cycle 1 port"))
            farm = asyncio.run(_rounds(port, nodes, progress, f"cycle {PORTS} ports"))
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    limit = MIN_OFF + SWITCH_SETTLE
    against = f"min_off {MIN_OFF:g} s + switch settle {SWITCH_SETTLE:g} s"
    return [
        Figure("power-cycle 1 port via SNMP (sim switch)", f"{one:.3f} s", against, limit / one),
        Figure(
            f"power-cycle {PORTS} ports in parallel via SNMP (sim switch)",
            f"{farm:.3f} s",
            against,
            limit / farm,
        ),
    ]


if __name__ == "__main__":
    for figure in run():
        print(figure)
