"""Polling a 42-port PoE switch over SNMP: the snmp-poe back end against net-snmp's snmpbulkwalk.

The agent is the simulated switch (``scalerunner sim switch``, a pysnmp agent) in its own process on
UDP loopback, every port powered at half load. Side by side, round after round:

- ours: ``SnmpPoeBackend.status()`` of all 42 ports — admin state, detection status and watts
  (normalised from the profile's mW column) — one GET of 126 objects, in a started back end;
- the peer: ``snmpbulkwalk -v2c`` as an operator would type it (default 10 repetitions per request),
  one process per poll, over the per-port power column alone (42 values), and over the three
  columns status() reads (three walks, 126 values).

The figure is the peer's median time per poll over ours (above 1: the back end polls faster). Both
ends share this machine's two cores with the agent, so each poll includes the agent's time too.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Figure
from scalerunner.coordinator.inventory import SnmpV2c, Switch
from scalerunner.coordinator.power.profiles import load_profiles
from scalerunner.coordinator.power.snmp_poe import SnmpPoeBackend
from scalerunner.sim.poe_model import PETH_PORT, SIM_PORT_POWER_MW

PORTS = 42
ROUNDS = 15
POWER = ".".join(map(str, SIM_PORT_POWER_MW))
COLUMNS = [".".join(map(str, (*PETH_PORT, 3))), ".".join(map(str, (*PETH_PORT, 6))), POWER]


def _walk(agent: str, oids: list[str]) -> float:
    t0 = time.perf_counter()
    for oid in oids:
        out = subprocess.run(
            ["snmpbulkwalk", "-v2c", "-c", "public", "-On", "-t", "2", "-r", "1", agent, oid],
            capture_output=True,
            text=True,
            check=True,
        )
        # The power column ends the sim's MIB: the last answer carries endOfMibView, which the tool prints.
        lines = sum(1 for line in out.stdout.splitlines() if "No more variables" not in line)
        if lines != PORTS:
            raise AssertionError(f"snmpbulkwalk {oid} gave {lines} lines, not {PORTS}")
    return time.perf_counter() - t0


async def _measure(agent: str, port: int) -> tuple[list[float], list[float], list[float]]:
    switch = Switch(
        name="bench",
        address="127.0.0.1",
        port=port,
        profile="scalerunner-sim",
        snmp=SnmpV2c(community="public"),
    )
    backend = SnmpPoeBackend(switch, load_profiles()["scalerunner-sim"], timeout=2.0, retries=1)
    await backend.start()
    ours: list[float] = []
    walk_power: list[float] = []
    walk_status: list[float] = []
    ports = list(range(1, PORTS + 1))
    try:
        await backend.status(ports)  # warm up: engine, transport, first request
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            status = await backend.status(ports)
            ours.append(time.perf_counter() - t0)
            if len(status) != PORTS or any(s.watts is None or s.watts <= 0 for s in status.values()):
                raise AssertionError("the back end did not read 42 powered ports")
            walk_power.append(await asyncio.to_thread(_walk, agent, [POWER]))
            walk_status.append(await asyncio.to_thread(_walk, agent, COLUMNS))
    finally:
        await backend.stop()
    return ours, walk_power, walk_status


def run() -> list[Figure]:
    if shutil.which("snmpbulkwalk") is None:
        raise RuntimeError("snmpbulkwalk is missing: `make setup` installs Debian's snmp package")
    cli = Path(sys.executable).parent / "scalerunner"
    proc = subprocess.Popen(
        [str(cli), "sim", "switch", "--ports", str(PORTS), "--listen", "127.0.0.1:0", "--load", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        agent = proc.stdout.readline().strip().removeprefix("udp:")
        if not agent:
            raise RuntimeError("scalerunner sim switch did not start")
        port = int(agent.rpartition(":")[2])
        ours, walk_power, walk_status = asyncio.run(_measure(agent, port))
    finally:
        proc.terminate()
        proc.wait(10)
    mine = statistics.median(ours)
    figures = []
    for what, peer in (
        ("per-port power column", walk_power),
        ("admin, detection and power columns (3 walks)", walk_status),
    ):
        theirs = statistics.median(peer)
        figures.append(
            Figure(
                name=f"SNMP poll of {PORTS} PoE ports: status() vs snmpbulkwalk of the {what}",
                measured=f"status() {mine * 1000:.1f} ms (1 GET, 126 objects)",
                against=f"snmpbulkwalk {theirs * 1000:.1f} ms",
                ratio=theirs / mine,
            )
        )
    return figures


if __name__ == "__main__":
    for f in run():
        print(f)
