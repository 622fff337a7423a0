"""What `scalerunner sim up` writes before anything runs: the rack's inventory and each node's agent
configuration (pure text from numbers and paths; the I/O lives in rack.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROW = 14  # Scalenodes per rack row (positions 1..14)
CLUSTER = "sim"
SWITCH = "sim-sw"
COMMUNITY = "private"
MARK = "# Written by `scalerunner sim up`"  # the inventory's first line: a directory sim up may reuse


@dataclass(frozen=True)
class SimNodeSpec:
    """One simulated Scalenode: its name, switch port, rack spot and the host ends of its serial lines."""

    name: str
    port: int  # switch port (1..N)
    row: int
    position: int
    mac: str
    bmc_port: str  # pty path the operator's `scalerunner bmc` opens
    led_port: str  # pty path the node's agent opens (led_serial)


def node_name(i: int) -> str:
    return f"sim-{i:02d}"


def rack_spot(i: int) -> tuple[int, int]:
    """Node ``i`` (from 1) sits in row ``(i-1)//14 + 1`` at position ``(i-1)%14 + 1``."""
    if i < 1:
        raise ValueError(f"node index {i} must be >= 1")
    return (i - 1) // ROW + 1, (i - 1) % ROW + 1


def node_specs(n: int, bmc_ports: list[str], led_ports: list[str]) -> list[SimNodeSpec]:
    if not (len(bmc_ports) == len(led_ports) == n):
        raise ValueError(f"{n} nodes need {n} BMC and {n} LED ports")
    specs = []
    for i in range(1, n + 1):
        row, pos = rack_spot(i)
        mac = f"02:53:52:00:{i >> 8:02x}:{i & 0xFF:02x}"
        specs.append(SimNodeSpec(node_name(i), i, row, pos, mac, bmc_ports[i - 1], led_ports[i - 1]))
    return specs


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def inventory_text(specs: list[SimNodeSpec], arch: str, switch_port: int) -> str:
    """The inventory: one simulated switch (ports 1..N for the nodes, N+1 the uplink), N nodes."""
    uplink = len(specs) + 1
    out = [
        f"{MARK}; replaced by the next one.\n"
        f'[cluster]\nname = {_q(CLUSTER)}\n\n[api]\nlisten = "127.0.0.1:0"\n\n'
        # A whole rack boots at once on two cores: give it time before recovery power-cycles it.
        "[timeouts]\nboot_timeout = 180\ntelemetry_timeout = 10\n\n"
        "[power]\nsample_interval = 2\nmin_off = 1\noff_timeout = 5\non_timeout = 5\n\n"
        f'[[switches]]\nname = {_q(SWITCH)}\naddress = "127.0.0.1"\nport = {switch_port}\n'
        f'profile = "scalerunner-sim"\nuplink_ports = [{uplink}]\n'
        f'snmp = {{ version = "2c", community = {_q(COMMUNITY)} }}\n'
    ]
    for s in specs:
        out.append(
            f"\n[[nodes]]\nname = {_q(s.name)}\nmac = {_q(s.mac)}\narch = {_q(arch)}\n"
            f'labels = ["sim"]\nswitch = {_q(SWITCH)}\nport = {s.port}\n'
            f"bmc_port = {_q(s.bmc_port)}\nled_port = {_q(s.led_port)}\n"
            f"rack = {{ row = {s.row}, position = {s.position} }}\ncpus = 1\n"
        )
    return "".join(out)


def agent_text(spec: SimNodeSpec, broker_port: int, password: str, state_dir: Path) -> str:
    """The node agent's config: the process runtime, the sim bench, the LED on its pty, one job slot."""
    return (
        f'cluster = {_q(CLUSTER)}\nnode = {_q(spec.name)}\nlabels = ["sim"]\n'
        f"state_dir = {_q(str(state_dir))}\nled_serial = {_q(spec.led_port)}\n\n"
        f'[broker]\nhost = "127.0.0.1"\nport = {broker_port}\npassword = {_q(password)}\nkeepalive = 5\n\n'
        "[telemetry]\ninterval = 2.0\n\n[capacity]\ncpus = 1\nslots = 1\n\n"
        '[jobs]\nruntime = "process"\nbench = "sim"  # no FPGA boards here: HIL checks in Icarus Verilog\n'
    )
