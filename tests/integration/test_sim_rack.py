"""`scalerunner sim up --detach` / `sim down` end to end: a 3-node rack of real processes (the simulated
PoE switch over SNMP, the coordinator with its mosquitto, per node a real agent and the LED and BMC
firmware under MicroPython on ptys), driven through the CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from scalerunner.sim import procs
from scalerunner.sim.supervisor import alive

pytestmark = [pytest.mark.slow, pytest.mark.micropython, pytest.mark.timeout(120)]

SCALERUNNER = str(Path(sys.executable).with_name("scalerunner"))
ONLINE = ("online", "idle")
T = TypeVar("T")


def wait_until(check: Callable[[], T | None], within: float, what: str) -> T:
    deadline = time.monotonic() + within
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.2)


class Rack:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.dir = root / "rack"

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCALERUNNER, *args], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / "status.json").read_text())
        return data

    def nodes(self) -> dict[str, dict[str, Any]]:
        out = self.cli("nodes", "ls", "--json")
        assert out.returncode == 0, out.stderr
        return {n["name"]: n for n in json.loads(out.stdout)}


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rack]:
    root = tmp_path_factory.mktemp("simrack")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALERUNNER_")}
    env.update({"SCALERUNNER_HOME": str(root / "home"), "COLUMNS": "200"})
    r = Rack(root, env)
    up = r.cli("sim", "up", "--nodes", "3", "--detach", "--dir", "rack", "--timeout", "60", timeout=90)
    try:
        assert up.returncode == 0, up.stdout + up.stderr + (r.dir / "sim.log").read_text()
        yield r
    finally:
        r.cli("sim", "down", "--dir", "rack")


def test_a_rack_comes_up_with_every_node_online(rack: Rack) -> None:
    up_text = rack.status()
    assert up_text["online"] == 3 and up_text["powered"] == 3
    nodes = rack.nodes()
    assert sorted(nodes) == ["sim-01", "sim-02", "sim-03"]
    for name, n in nodes.items():
        assert n["state"] in ONLINE, (name, n["state"])
        assert n["rack"] == {"row": 1, "position": int(name[-2:])}
        assert (n["switch"], n["port"]) == ("sim-sw", int(name[-2:]))
    table = rack.cli("nodes", "ls")
    assert table.returncode == 0 and table.stdout.count("sim-0") == 3, table.stdout
    # each node runs an agent and two firmwares; the agent drives its LED firmware over the relayed pty
    for v in rack.status()["nodes"].values():
        assert len(v["pids"]) == 3 and all(alive(p) for p in v["pids"])
    # one rack per directory: a second `sim up` there is refused and says how to stop the first
    again = rack.cli("sim", "up", "--nodes", "1", "--dir", "rack")
    assert again.returncode == 2 and "already runs" in again.stderr and "sim down --dir rack" in again.stderr
    brief = rack.cli("sim", "status", "--dir", "rack", "--brief")
    assert brief.returncode == 0 and "3/3 online" in brief.stdout and "#token=" in brief.stdout
    led = (rack.dir / "nodes" / "sim-01" / "agent.log").read_text()
    assert "LED indicator driven" in led
    # the BMC firmware answers on the inventory's bmc_port, as a real BMC would
    bmc = rack.cli("bmc", "status", "sim-01", "--config", "rack/scalerunner.toml", "--json")
    assert bmc.returncode == 0, bmc.stderr
    assert json.loads(bmc.stdout)["power_state"] == "ON"  # the BMC switched the module on at boot


def test_power_off_stops_the_node_and_power_on_brings_it_back(rack: Rack) -> None:
    before = rack.status()["nodes"]["sim-02"]
    pids = before["pids"]
    off = rack.cli("power", "off", "sim-02")
    assert off.returncode == 0, off.stderr
    # the port's power is gone: the agent and both firmwares are gone with it
    wait_until(lambda: not any(alive(p) for p in pids), 10, "sim-02's processes stop")
    wait_until(lambda: rack.status()["nodes"]["sim-02"]["powered"] is False, 5, "status.json follows")
    wait_until(lambda: rack.nodes()["sim-02"]["state"] in ("off", "offline"), 15, "sim-02 off")
    assert rack.nodes()["sim-01"]["state"] in ONLINE  # its neighbours keep running
    watts = wait_until(lambda: rack.status()["nodes"]["sim-02"]["watts"] == 0.0 or None, 5, "no draw")
    assert watts

    on = rack.cli("power", "on", "sim-02")
    assert on.returncode == 0, on.stderr
    wait_until(lambda: rack.nodes()["sim-02"]["state"] in ONLINE, 30, "sim-02 back online")
    after = rack.status()["nodes"]["sim-02"]
    assert after["boots"] == before["boots"] + 1
    assert not set(after["pids"]) & set(pids) and all(alive(p) for p in after["pids"])
    assert after["watts"] > 0


def test_a_nodes_power_draw_follows_the_load_of_its_job(rack: Rack) -> None:
    idle = {n: v["watts"] for n, v in rack.status()["nodes"].items()}
    assert all(0 < w < 4 for w in idle.values()), idle  # the profile's idle draw, give or take
    burn = "i=0; while [ $i -lt 4000000 ]; do i=$((i+1)); done"
    sub = rack.cli("jobs", "submit", "--name", "burn", "--timeout", "2m", "--", "sh", "-c", burn)
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().splitlines()[-1]

    def hot() -> tuple[str, float] | None:
        shown = rack.cli("jobs", "show", job, "--json")
        node = json.loads(shown.stdout).get("node") if shown.returncode == 0 else None
        watts = rack.status()["nodes"][node]["watts"] if node else 0.0
        return (node, watts) if node and watts > idle[node] + 2 else None

    node, watts = wait_until(hot, 30, "the busy node's port draws more")
    others = [v["watts"] for n, v in rack.status()["nodes"].items() if n != node]
    assert all(w < watts - 2 for w in others), (node, watts, others)
    rack.cli("jobs", "cancel", job)


def test_sim_down_leaves_no_process(rack: Rack) -> None:
    status = rack.status()
    supervisor = status["pid"]
    started = [p for v in status["nodes"].values() for p in v["pids"]]
    mosquitto = [p for p in procs.scan() if procs.mentions(p, rack.dir.resolve()) and p not in started]
    assert supervisor in mosquitto and len(mosquitto) >= 2  # the supervisor and its mosquitto
    down = rack.cli("sim", "down", "--dir", "rack")
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stderr and "left behind" not in down.stderr  # stopped, not killed
    assert not [p for p in [*started, *mosquitto] if alive(p)]
    assert procs.leftovers(supervisor, rack.dir) == []
    pgrep = subprocess.run(["pgrep", "-f", str(rack.dir.resolve())], capture_output=True, text=True)
    assert pgrep.stdout == ""
    assert not (rack.dir / "sim.pid").exists()
    status_cmd = rack.cli("sim", "status", "--dir", "rack")
    assert status_cmd.returncode == 1 and "no rack runs" in status_cmd.stderr
