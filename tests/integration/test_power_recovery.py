"""Recovery end to end: the node lifecycle (NodeManager, real SQLite store) carrying out its power
actions through the power service and the snmp-poe back end on the simulated PoE switch. A node
that never comes online is power-cycled with back-off, a bounded number of times, then failed and
bad; an operator's power-off wins over a recovery cycle in progress and over one only due."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from scalerunner.coordinator import lifecycle as lc
from scalerunner.coordinator.health import Health
from scalerunner.coordinator.inventory import Inventory, inventory_from_dict
from scalerunner.coordinator.nodes import NodeManager
from scalerunner.coordinator.power.backends import build_backends
from scalerunner.coordinator.power.manager import PowerManager
from scalerunner.coordinator.power.sequence import Op, SequenceConfig
from scalerunner.coordinator.power.service import PowerService
from scalerunner.coordinator.store import SqliteStore
from scalerunner.sim import PoeSwitchModel, SimPoeSwitch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

LIFE = lc.LifecycleConfig(boot_timeout=0.6, backoff_base=0.2, backoff_cap=0.4, max_recoveries=2)


def inventory(port: int) -> Inventory:
    return inventory_from_dict(
        {
            "cluster": {"name": "lab"},
            "switches": [
                {
                    "name": "sw1",
                    "address": "127.0.0.1",
                    "port": port,
                    "profile": "scalerunner-sim",
                    "snmp": {"version": "2c", "community": "private"},
                }
            ],
            "nodes": [
                {"name": "n1", "mac": "02:00:00:00:00:01", "arch": "arm64", "switch": "sw1", "port": 1}
            ],
        },
        "/tmp/scalerunner.toml",
    )


Scenario = Callable[[SimPoeSwitch, NodeManager, PowerService, list[tuple[int, bool]]], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, min_off: float, life: lc.LifecycleConfig = LIFE) -> None:
    async def main() -> None:
        agent = SimPoeSwitch(PoeSwitchModel(ports=4), communities=["private"])
        async with agent, SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            seen: list[tuple[int, bool]] = []
            agent.on_port_change(lambda port, on: seen.append((port, on)))
            inv = inventory(agent.port)
            cfg = SequenceConfig(min_off=min_off, off_timeout=2, on_timeout=2, poll_interval=0.05)
            pm = PowerManager(inv, build_backends(inv), store, config=cfg)
            nodes = NodeManager(inv, store, config=life)
            service = PowerService(nodes, pm)
            service.attach()
            await pm.start()
            await nodes.start()
            try:
                await scenario(agent, nodes, service, seen)
            finally:
                await nodes.stop()
                await pm.stop()

    asyncio.run(main())


async def until(check: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_a_node_that_never_comes_online_is_cycled_with_backoff_then_failed_and_bad(tmp_path: Path) -> None:
    async def scenario(
        agent: SimPoeSwitch, nodes: NodeManager, service: PowerService, seen: list[tuple[int, bool]]
    ) -> None:
        [result] = await service.act(["n1"], Op.ON)
        assert (result.ok, result.state) == (True, "on")
        assert nodes.records["n1"].state is lc.NodeLifecycle.BOOTING
        await until(lambda: nodes.records["n1"].state is lc.NodeLifecycle.FAILED)
        rec = nodes.records["n1"]
        assert rec.health is Health.BAD and rec.recoveries == 2
        assert seen == [(1, False), (1, True)] * 2  # exactly max_recoveries cycles, each whole
        await asyncio.sleep(0.1)  # the last power event is written by the task's callback
        events = await nodes.store.list_events(node="n1")
        power = [(e.new, e.reason.split(";")[0]) for e in events if e.axis == "power"]
        assert power == [
            ("on ok", "operator: operator request"),
            (
                "cycle ok",
                "automatic: recovery power-cycle 1 of 2: did not come online within 0.6 s of power-on",
            ),
            (
                "cycle ok",
                "automatic: recovery power-cycle 2 of 2: did not come online within 0.6 s of power-on",
            ),
        ]
        [bad] = [e for e in events if e.axis == "health" and e.new == "bad"]
        assert bad.reason.startswith("recovery gave up: did not come online within 0.6 s of power-on")
        # a failed node is refused power-on, per node, naming it
        [refused] = await service.act(["n1"], Op.ON)
        assert (refused.ok, refused.cause) == (False, "refused")
        assert "node n1 is failed, cannot be powered on until an operator resets it" in refused.message

    run(tmp_path, scenario, min_off=0.1)


def test_an_operators_power_off_cancels_a_recovery_cycle_in_progress(tmp_path: Path) -> None:
    async def scenario(
        agent: SimPoeSwitch, nodes: NodeManager, service: PowerService, seen: list[tuple[int, bool]]
    ) -> None:
        await service.act(["n1"], Op.ON)
        await until(lambda: seen == [(1, False)])  # recovery cycle 1 holds the port off now
        [off] = await service.act(["n1"], Op.OFF, reason="unplugging it")
        assert (off.ok, off.state) == (True, "off")
        assert nodes.records["n1"].state is lc.NodeLifecycle.OFF
        await asyncio.sleep(1.5)  # longer than the cycle's min_off and the whole back-off
        assert seen == [(1, False)] and not agent.model.port(1).admin_on
        assert nodes.records["n1"].state is lc.NodeLifecycle.OFF
        events = await nodes.store.list_events(node="n1")
        power = [e.new for e in events if e.axis == "power"]
        assert power == ["on ok", "cycle cancelled", "off ok"]

    run(tmp_path, scenario, min_off=1.0)


def test_an_operators_power_off_cancels_a_recovery_only_due(tmp_path: Path) -> None:
    async def scenario(
        agent: SimPoeSwitch, nodes: NodeManager, service: PowerService, seen: list[tuple[int, bool]]
    ) -> None:
        await service.act(["n1"], Op.ON)
        await until(lambda: nodes.records["n1"].recovery_at is not None)  # in its 2 s back-off
        [off] = await service.act(["n1"], Op.OFF)
        assert off.ok and nodes.records["n1"].recovery_at is None
        await asyncio.sleep(2.5)  # past the back-off
        assert seen == [(1, False)] and nodes.records["n1"].state is lc.NodeLifecycle.OFF
        events = await nodes.store.list_events(node="n1")
        assert [e.new for e in events if e.axis == "power"] == ["on ok", "off ok"]  # no recovery cycle at all

    slow = lc.LifecycleConfig(boot_timeout=0.6, backoff_base=2.0, backoff_cap=2.0, max_recoveries=2)
    run(tmp_path, scenario, min_off=0.1, life=slow)
