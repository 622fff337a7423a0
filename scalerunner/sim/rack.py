"""The simulated rack (`scalerunner sim up`): a simulated PoE switch (a real SNMP agent), the coordinator
with its mosquitto and API, and N simulated Scalenodes (sim/node.py) on the switch's ports.

A node runs only while its port delivers power: the switch's ``on_port_change`` boots or halts it, so
powering a node off through the coordinator (SNMP SET on the switch) really stops its agent and
firmware. The rack switches its nodes on through the coordinator's power API, as an operator would,
so the lifecycle sees every step. Each node's CPU use (agent and jobs) is its port's load, so the
power the switch reports follows what the node does. ``status.json`` in the rack's directory says
how far it is, for `sim up --detach` and `sim status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ..atomic import atomic_write
from ..firmware import find_tool
from . import procs
from .node import Pty, SimNode
from .poe_model import PoeSwitchModel
from .poe_switch import SimPoeSwitch
from .rack_config import COMMUNITY, MARK, SWITCH, agent_text, inventory_text, node_specs

log = logging.getLogger("scalerunner.sim.rack")

ONLINE = frozenset({"online", "idle", "busy", "draining"})
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "riscv64": "riscv64"}
LOAD_PERIOD = 1.0  # seconds between CPU samples of the nodes


class RackError(Exception):
    """The rack cannot come up; the message names the part (switch, coordinator, node, tool)."""


def host_arch() -> str:
    return _ARCH.get(platform.machine(), "amd64")


class SimRack:
    def __init__(self, root: Path, n: int) -> None:
        if n < 1:
            raise RackError(f"--nodes {n}: a rack needs at least one node")
        self.root = root.resolve()
        self.n = n
        self.phase = "starting"
        self.switch: SimPoeSwitch | None = None
        self.coordinator: Any = None  # coordinator.app.Coordinator (imported late: it is heavy)
        self.nodes: dict[str, SimNode] = {}
        self.by_port: dict[int, SimNode] = {}
        self._host_ptys: list[Pty] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._ticks: dict[str, tuple[int, float]] = {}
        self._vouched: set[str] = set()

    @property
    def inventory_path(self) -> Path:
        return self.root / "scalerunner.toml"

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        from ..coordinator.app import Coordinator
        from ..coordinator.inventory import load_inventory

        micropython = find_tool("micropython")
        if micropython is None:
            raise RackError("micropython (the unix port) is not installed; run `make setup`")
        agent_bin = str(Path(sys.executable).with_name("scalerunner-agent"))
        if not os.access(agent_bin, os.X_OK):
            raise RackError(f"{agent_bin}: the node agent is not installed beside {sys.executable}")
        self._fresh_dir()

        led = [Pty.open() for _ in range(self.n)]
        bmc = [Pty.open() for _ in range(self.n)]
        self._host_ptys = led + bmc
        specs = node_specs(self.n, [p.path for p in bmc], [p.path for p in led])

        self.phase = "switch"
        self._write_status()
        # Ports 1..N power the nodes, N+1 is the uplink. The nodes start unpowered: the
        # coordinator switches them on, so the lifecycle sees them boot.
        model = PoeSwitchModel(ports=self.n + 1, name=SWITCH)
        for s in specs:
            model.set_admin(s.port, False)
        self.switch = SimPoeSwitch(model, communities=(COMMUNITY,))
        try:
            await self.switch.start()
        except OSError as exc:
            raise RackError(f"simulated switch: {exc}") from exc

        self.phase = "coordinator"
        self._write_status()
        self.inventory_path.write_text(inventory_text(specs, host_arch(), self.switch.port))
        self.coordinator = Coordinator(
            load_inventory(self.inventory_path),
            self.root / "state",
            api_port=0,
            source=str(self.inventory_path),
        )
        await self.coordinator.start()
        # where the CLI finds this coordinator (the layout of cli/client.py's api.json), owner-only
        endpoint = {"url": self.coordinator.api_url, "token": self.coordinator.token}
        atomic_write(self.root / "api.json", json.dumps(endpoint).encode())

        broker_port = self.coordinator.broker.access().port
        for i, s in enumerate(specs):
            workdir = self.root / "nodes" / s.name
            workdir.mkdir(parents=True, exist_ok=True)
            cfg = workdir / "agent.toml"
            password = self.coordinator.broker.node_password(s.name)
            atomic_write(cfg, agent_text(s, broker_port, password, workdir).encode())  # 0600: a password
            node = SimNode(
                s,
                led_host=led[i],
                bmc_host=bmc[i],
                agent_config=cfg,
                workdir=workdir,
                micropython=micropython,
                agent=agent_bin,
            )
            self.nodes[s.name] = node
            self.by_port[s.port] = node
        self.switch.on_port_change(self._port_changed)
        self._tasks.append(asyncio.create_task(self._follow_load(), name="sim-load"))
        self._tasks.append(asyncio.create_task(self._report(), name="sim-status"))

        self.phase = "powering on"
        self._write_status()
        results = await self.api(
            "POST", "/api/v1/power/on", json={"nodes": list(self.nodes), "reason": "sim up"}
        )
        failed = [r for r in results if not r["ok"]]
        if failed:
            raise RackError("power on failed: " + "; ".join(f"{r['node']}: {r['message']}" for r in failed))
        self.phase = "booting"
        self._write_status()

    async def stop(self) -> None:
        self.phase = "stopping"
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        try:
            closed = await asyncio.gather(*(n.close() for n in self.nodes.values()), return_exceptions=True)
            for name, result in zip(self.nodes, closed, strict=True):
                if isinstance(result, BaseException):
                    log.error("node did not stop cleanly", exc_info=result, extra={"node": name})
            if self.coordinator is not None:
                await self.coordinator.stop()
        finally:  # the switch and the cables go whatever failed before
            if self.switch is not None:
                await self.switch.stop()
            for pty in self._host_ptys:
                pty.close()
        self.phase = "stopped"
        with contextlib.suppress(OSError):
            self._write_status()

    def _fresh_dir(self) -> None:
        """Every `sim up` is a new rack (new ptys, new ports): what an earlier one left in the
        directory (its store, broker files, node logs) goes, so no stale node state or job shows.
        A directory holding an inventory sim up did not write is refused, not emptied."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.inventory_path.exists() and not self.inventory_path.read_text().startswith(MARK):
            raise RackError(
                f"{self.inventory_path}: an inventory `scalerunner sim up` did not write; use another --dir"
            )
        for sub in ("state", "nodes"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        for name in ("status.json", "api.json", "scalerunner.toml"):
            (self.root / name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ what happens while it runs

    async def _port_changed(self, port: int, on: bool) -> None:
        node = self.by_port.get(port)
        if node is None:
            return  # the uplink
        await (node.boot() if on else node.halt())

    async def api(self, method: str, path: str, **kw: Any) -> Any:
        c = self.coordinator
        async with httpx.AsyncClient(timeout=60) as client:
            resp = await client.request(
                method, c.api_url + path, headers={"Authorization": f"Bearer {c.token}"}, **kw
            )
        if resp.status_code >= 400:
            raise RackError(f"coordinator {method} {path}: HTTP {resp.status_code} {resp.text[:200]}")
        return resp.json()

    async def _follow_load(self) -> None:
        """Each node's CPU use (agent and jobs, from /proc) becomes its port's load."""
        assert self.switch is not None
        while True:
            stats = await asyncio.to_thread(procs.scan)
            now = time.monotonic()
            for name, node in self.nodes.items():
                agent = node.agent
                if agent is None or agent.returncode is not None:
                    self._ticks.pop(name, None)
                    self.switch.set_load(node.spec.port, 0.0)
                    continue
                ticks = procs.tree_ticks(stats, agent.pid)
                prev = self._ticks.get(name)
                self._ticks[name] = (ticks, now)
                if prev is not None and now > prev[1]:
                    busy = (ticks - prev[0]) / procs.CLOCK_TICKS / (now - prev[1])
                    self.switch.set_load(node.spec.port, max(0.0, min(1.0, busy)))
            await asyncio.sleep(LOAD_PERIOD)

    async def _report(self) -> None:
        while True:
            self._write_status()
            await self._vouch()
            await asyncio.sleep(0.5)

    async def _vouch(self) -> None:
        """A simulated node has no hardware to burn in: once it is first online with its health
        still unknown, the rack says good through the API (as an operator would), so jobs run."""
        for name, rec in self.coordinator.nodes.records.items():
            if name in self._vouched or rec.state.value not in ONLINE or rec.health.value != "unknown":
                continue
            self._vouched.add(name)
            try:
                await self.api(
                    "PUT",
                    f"/api/v1/nodes/{name}/health",
                    json={"health": "good", "reason": "sim: simulated hardware, nothing to check"},
                )
            except (RackError, httpx.HTTPError) as exc:
                log.warning("could not set health", extra={"node": name, "error": str(exc)})

    def snapshot(self) -> dict[str, Any]:
        states: dict[str, str] = {}
        connected: set[str] = set()
        if self.coordinator is not None:
            for rec_name, rec in self.coordinator.nodes.records.items():
                states[rec_name] = rec.state.value
                if rec.conn_online:
                    connected.add(rec_name)
        nodes = {}
        for name, node in self.nodes.items():
            nodes[name] = {
                "port": node.spec.port,
                "row": node.spec.row,
                "position": node.spec.position,
                "powered": node.powered,
                "boots": node.boots,
                "pids": node.pids(),
                "state": states.get(name, "unknown"),
                "watts": round(self.switch.model.watts(node.spec.port), 2) if self.switch else 0.0,
                "bmc_port": node.spec.bmc_port,
                "led_port": node.spec.led_port,
            }
        # online: powered here, its agent connected, and the lifecycle agrees
        online = sum(
            states.get(n) in ONLINE and node.powered and n in connected for n, node in self.nodes.items()
        )
        return {
            "pid": os.getpid(),
            "phase": "up" if self.phase == "booting" and online == self.n else self.phase,
            "total": self.n,
            "powered": sum(bool(v["powered"]) for v in nodes.values()),
            "online": online,
            "switch": f"udp:{self.switch.host}:{self.switch.port}" if self.switch else None,
            "api": self.coordinator.api_url if self.coordinator is not None else None,
            "inventory": str(self.inventory_path),
            "nodes": nodes,
        }

    def _write_status(self) -> None:
        atomic_write(self.status_path, json.dumps(self.snapshot(), indent=1).encode())
