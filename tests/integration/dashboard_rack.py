"""A small real rack for the dashboard's browser tests and ``make screenshot``.

One background thread runs an asyncio loop holding the simulated PoE switch (SNMP on loopback)
and a real ``Coordinator`` (its managed mosquitto, SQLite store, power manager on the switch,
uvicorn). The nodes are MQTT clients logging in with their own broker passwords and publishing
the agent's real payloads (``NodeState``, ``Telemetry``), so a test decides each node's load and
temperature. ``close()`` stops everything it started.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from scalerunner.coordinator.app import Coordinator
from scalerunner.coordinator.broker.credentials import node_password
from scalerunner.coordinator.inventory import Inventory, inventory_from_dict
from scalerunner.protocol.mqtt import Kind, NodeState, Telemetry, encode, node_topic
from scalerunner.sim import PoeSwitchModel, SimPoeSwitch
from tests.integration.broker_fixtures import MqttProbe

T = TypeVar("T")
CLUSTER = "lab"
ROW = 14


def rack_inventory(nodes: int, switch_port: int, state: Path) -> Inventory:
    return inventory_from_dict(
        {
            "cluster": {"name": CLUSTER},
            "broker": {"mode": "managed", "host": "127.0.0.1", "port": 0},
            "store": {"url": f"sqlite:///{state}/scalerunner.db"},
            "api": {"listen": "127.0.0.1:0"},
            "timeouts": {"boot_timeout": 60, "telemetry_timeout": 30},
            "power": {"sample_interval": 0.5, "min_off": 0.3, "off_timeout": 5, "on_timeout": 5},
            "switches": [
                {
                    "name": "sw1",
                    "address": "127.0.0.1",
                    "port": switch_port,
                    "profile": "scalerunner-sim",
                    "snmp": {"version": "2c", "community": "private"},
                }
            ],
            "nodes": [
                {
                    "name": f"rack1-{i:02d}",
                    "mac": f"02:00:00:00:00:{i:02x}",
                    "arch": "arm64",
                    "switch": "sw1",
                    "port": i,
                    "cpus": 4,
                    "rack": {"row": (i - 1) // ROW + 1, "position": (i - 1) % ROW + 1},
                }
                for i in range(1, nodes + 1)
            ],
        },
        str(state / "scalerunner.toml"),
    )


class DashboardRack:
    def __init__(self, root: Path, nodes: int = 3) -> None:
        self.root = root
        self.names = [f"rack1-{i:02d}" for i in range(1, nodes + 1)]
        self.port_changes: list[tuple[int, bool]] = []  # what the switch did, in order
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dashboard-rack", daemon=True)
        self._thread.start()
        self._probes: dict[str, MqttProbe] = {}
        self._agents: list[subprocess.Popen[bytes]] = []
        self.switch = SimPoeSwitch(PoeSwitchModel(ports=nodes + 2), communities=["private"])
        self.coordinator: Coordinator | None = None
        try:
            self.call(self._start)
        except BaseException:
            self.close()
            raise

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout)

    async def _start(self) -> None:
        await self.switch.start()
        self.switch.on_port_change(lambda port, on: self.port_changes.append((port, on)))
        inventory = rack_inventory(len(self.names), self.switch.port, self.root)
        self.coordinator = Coordinator(inventory, self.root, source=str(self.root / "scalerunner.toml"))
        await self.coordinator.start()

    @property
    def url(self) -> str:
        assert self.coordinator is not None
        return self.coordinator.api_url

    @property
    def token(self) -> str:
        assert self.coordinator is not None
        return self.coordinator.token

    def node_online(self, node: str) -> None:
        """``node``'s agent connects and says it is online, as the real agent does."""
        assert self.coordinator is not None
        access = self.coordinator.broker.access()
        probe = MqttProbe(
            access.host, access.port, node, node_password(self.root / "broker-credentials.json", node)
        )
        probe.connect()
        self._probes[node] = probe
        state = NodeState(
            node=node, status="online", conn_seq=int(time.time() * 1000), arch="arm64", ts=time.time()
        )
        probe.publish(node_topic(CLUSTER, node, Kind.STATE), encode(state), retain=True)
        # telemetry before the coordinator took the node online would be judged against "off"
        deadline = time.monotonic() + 10
        while self.coordinator.nodes.records[node].state.value not in ("online", "idle", "busy"):
            if time.monotonic() > deadline:
                raise AssertionError(f"{node} not online within 10 s")
            time.sleep(0.02)

    def start_agent(self, node: str) -> None:
        """A real ``scalerunner-agent`` for ``node`` (process runtime: it runs jobs)."""
        assert self.coordinator is not None
        access = self.coordinator.broker.access()
        password = node_password(self.root / "broker-credentials.json", node)
        config = self.root / f"agent-{node}.toml"
        config.write_text(
            f'cluster = "{CLUSTER}"\nnode = "{node}"\nstate_dir = "{self.root / node}"\n'
            f'[broker]\nhost = "{access.host}"\nport = {access.port}\npassword = "{password}"\n'
            "reconnect_min = 0.1\nreconnect_max = 0.5\n[telemetry]\ninterval = 0.5\n"
        )
        (self.root / "cmdline").write_text("")
        agent = Path(sys.executable).parent / "scalerunner-agent"
        with (self.root / f"agent-{node}.log").open("ab") as log:
            self._agents.append(
                subprocess.Popen(
                    [str(agent), "--config", str(config), "--cmdline", str(self.root / "cmdline")],
                    stdout=log,
                    stderr=log,
                )
            )

    def telemetry(self, node: str, load1: float, temp_c: float | None) -> None:
        tele = Telemetry(
            node=node,
            ts=time.time(),
            load1=load1,
            cpu_pct=min(100.0, load1 * 25),
            mem_used_mb=900,
            mem_total_mb=4096,
            temp_c=temp_c,
        )
        self._probes[node].publish(node_topic(CLUSTER, node, Kind.TELEMETRY), encode(tele))

    def draw(self, node: str, fraction: float) -> None:
        """The switch port of ``node`` draws idle + ``fraction`` of the rest of its class (a busy node)."""
        port = self.names.index(node) + 1
        self._loop.call_soon_threadsafe(self.switch.set_load, port, fraction)

    def close(self) -> None:
        for proc in self._agents:
            proc.terminate()
        for proc in self._agents:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for probe in self._probes.values():
            probe.close()
        self._probes.clear()

        async def stop() -> None:
            if self.coordinator is not None:
                await self.coordinator.stop()
            await self.switch.stop()

        try:
            self.call(stop)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
