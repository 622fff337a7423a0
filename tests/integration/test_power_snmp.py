"""The power manager with the snmp-poe back end against the simulated PoE switch (a real pysnmp
agent on UDP loopback): cycle as the attached device sees it, bulk with per-port timeouts and
faults, uplink and free ports refused without a SET reaching the switch, per-port locking, and a
switch that does not answer."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from scalerunner.coordinator.inventory import Inventory, inventory_from_dict
from scalerunner.coordinator.power.backends import build_backends
from scalerunner.coordinator.power.base import OutletStatus, PowerError, PowerState
from scalerunner.coordinator.power.batch import StatusBatcher
from scalerunner.coordinator.power.manager import PowerManager
from scalerunner.coordinator.power.outlets import Outlet
from scalerunner.coordinator.power.results import exit_code
from scalerunner.coordinator.power.sequence import Op, SequenceConfig
from scalerunner.sim import PoeSwitchModel, SimPoeSwitch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

FAST = SequenceConfig(min_off=0.3, off_timeout=3.0, on_timeout=3.0, poll_interval=0.05)


def inventory(port: int, nodes: int = 5) -> Inventory:
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
                    "uplink_ports": [8],
                }
            ],
            "nodes": [
                {
                    "name": f"n{p}",
                    "mac": f"02:00:00:00:00:{p:02x}",
                    "arch": "arm64",
                    "switch": "sw1",
                    "port": p,
                }
                for p in range(1, nodes + 1)
            ],
        },
        "/tmp/scalerunner.toml",
    )


Scenario = Callable[[SimPoeSwitch, PowerManager, list[tuple[float, int, bool]]], Awaitable[None]]


def run(scenario: Scenario, **model: Any) -> None:
    async def main() -> None:
        agent = SimPoeSwitch(PoeSwitchModel(**{"ports": 8, **model}), communities=["private"])
        async with agent:
            seen: list[tuple[float, int, bool]] = []
            agent.on_port_change(lambda port, on: seen.append((time.monotonic(), port, on)))
            inv = inventory(agent.port)
            pm = PowerManager(inv, build_backends(inv), config=FAST)
            await pm.start()
            try:
                await scenario(agent, pm, seen)
            finally:
                await pm.stop()

    asyncio.run(main())


def test_a_cycle_is_off_held_then_on_as_the_attached_device_sees_it() -> None:
    async def scenario(agent: SimPoeSwitch, pm: PowerManager, seen: list[tuple[float, int, bool]]) -> None:
        status = await pm.run("n3", Op.CYCLE)
        assert (status.outlet, status.state, status.detail) == ("sw1:3", PowerState.ON, "deliveringPower")
        assert [(p, on) for _, p, on in seen] == [(3, False), (3, True)]
        assert seen[1][0] - seen[0][0] >= FAST.min_off
        [row] = await pm.status(["n3"])
        assert (row.ok, row.state, row.watts) == (True, "on", pytest.approx(2.5))

    run(scenario)


def test_bulk_cycle_reports_a_timeout_and_a_fault_per_port_and_cycles_the_rest() -> None:
    async def scenario(agent: SimPoeSwitch, pm: PowerManager, seen: list[tuple[float, int, bool]]) -> None:
        agent.set_device(4, False)  # nothing plugged in: the port searches forever
        results = await pm.bulk(["n1", "n2", "n3", "n4", "n5"], Op.CYCLE)
        agent.set_fault(5, True)
        [faulted] = await pm.bulk(["n5"], Op.ON)
        ok = [r.node for r in results if r.ok]
        assert ok == ["n1", "n2", "n3", "n5"] and exit_code(results) == 1
        [timeout] = [r for r in results if not r.ok]
        assert (timeout.node, timeout.outlet, timeout.cause) == ("n4", "sw1:4", "timeout")
        assert timeout.message.startswith("sw1:4: cycle: ")
        assert "not delivering power" in timeout.message and "last status searching" in timeout.message
        assert (faulted.ok, faulted.outlet, faulted.cause) == (False, "sw1:5", "fault")
        assert faulted.message == (
            "sw1:5: on: switched on but reports a fault (fault); "
            "the outlet was asked to switch on and is not confirmed on"
        )
        assert pm.failures == {"timeout": 1, "fault": 1}

    run(scenario)


def test_uplink_and_free_ports_are_refused_before_any_request_reaches_the_switch() -> None:
    async def scenario(agent: SimPoeSwitch, pm: PowerManager, seen: list[tuple[float, int, bool]]) -> None:
        for outlet, words in [(Outlet("sw1", 8), "is an uplink port"), (Outlet("sw1", 6), "powers no node")]:
            for op in Op:
                with pytest.raises(PowerError, match=words) as info:
                    await pm.run_outlet(outlet, op)
                assert (info.value.outlet, info.value.cause) == (outlet.name, "not-assigned")
        assert seen == [] and agent.model.port(8).admin_on and agent.model.port(6).admin_on

    run(scenario)


def test_two_cycles_of_one_port_never_interleave_while_other_ports_run_in_parallel() -> None:
    async def scenario(agent: SimPoeSwitch, pm: PowerManager, seen: list[tuple[float, int, bool]]) -> None:
        await asyncio.gather(pm.run("n1", Op.CYCLE), pm.run("n1", Op.CYCLE), pm.run("n2", Op.CYCLE))
        assert [on for _, p, on in seen if p == 1] == [False, True, False, True]
        assert [on for _, p, on in seen if p == 2] == [False, True]
        # port 2 did not queue behind port 1: it was back on before port 1's second cycle began
        port1 = [t for t, p, _ in seen if p == 1]
        port2_on = next(t for t, p, on in seen if p == 2 and on)
        assert port2_on < port1[2]

    run(scenario)


def test_a_switch_that_does_not_answer_is_a_timeout_per_node() -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:  # bound, never answers
            sink.bind(("127.0.0.1", 0))
            inv = inventory(sink.getsockname()[1], nodes=2)
            pm = PowerManager(inv, build_backends(inv), config=FAST)
            await pm.start()
            try:
                results = await pm.bulk(["n1", "n2"], Op.OFF)
                status = await pm.status()
            finally:
                await pm.stop()
        assert [(r.node, r.outlet, r.cause) for r in results] == [
            ("n1", "sw1:1", "timeout"),
            ("n2", "sw1:2", "timeout"),
        ]
        assert all("may still be on" in r.message for r in results)
        assert [(r.node, r.ok, r.cause) for r in status] == [
            ("n1", False, "timeout"),
            ("n2", False, "timeout"),
        ]

    asyncio.run(main())


def test_concurrent_polls_of_one_switch_are_one_request_and_a_bad_port_fails_alone() -> None:
    async def scenario(agent: SimPoeSwitch, pm: PowerManager, seen: list[tuple[float, int, bool]]) -> None:
        batcher = StatusBatcher(pm.backends["sw1"])
        got = await asyncio.gather(*(batcher.read(p) for p in (1, 2, 3, 2)))
        assert [s.outlet for s in got] == ["sw1:1", "sw1:2", "sw1:3", "sw1:2"] and batcher.requests == 1
        mixed = await asyncio.gather(batcher.read(1), batcher.read(99), return_exceptions=True)
        assert isinstance(mixed[0], OutletStatus) and mixed[0].state is PowerState.ON
        assert isinstance(mixed[1], PowerError) and mixed[1].outlet == "sw1:99"
        assert mixed[1].cause == "no-such-object"
        assert batcher.requests == 1 + 3  # the joined read, then each port alone

    run(scenario)
