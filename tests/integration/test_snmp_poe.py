"""The snmp-poe back end against the simulated PoE switch, a real pysnmp agent on UDP loopback:
v2c and v3 authPriv, every error cause, the budget fault, the port-change callbacks, and the
agent seen from net-snmp's tools (a manager we did not write)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from scalerunner.coordinator.inventory import SnmpV2c, SnmpV3, Switch
from scalerunner.coordinator.power.base import PowerError, PowerState
from scalerunner.coordinator.power.profiles import PethOids, Profile, load_profiles
from scalerunner.coordinator.power.snmp_poe import SnmpPoeBackend
from scalerunner.sim import PoeSwitchModel, SimPoeSwitch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

SIM = load_profiles()["scalerunner-sim"]
RW = SnmpV2c(community="private")
V3 = SnmpV3(
    user="ops",
    auth_protocol="sha256",
    auth_key="auth-secret-1",
    priv_protocol="aes",
    priv_key="priv-secret-1",
)


def _switch(port: int, snmp: SnmpV2c | SnmpV3 = RW, group: int = 1) -> Switch:
    return Switch(
        name="sw1", address="127.0.0.1", port=port, profile="scalerunner-sim", pse_group=group, snmp=snmp
    )


Scenario = Callable[[SimPoeSwitch], Awaitable[None]]


def run(scenario: Scenario, max_varbinds: int | None = None, **model: Any) -> None:
    async def main() -> None:
        agent = SimPoeSwitch(
            PoeSwitchModel(**{"ports": 8, **model}),
            communities=["private"],
            read_only_communities=["public"],
            v3_users=[V3],
            max_varbinds=max_varbinds,
        )
        async with agent:
            await scenario(agent)

    asyncio.run(main())


async def backend(agent: SimPoeSwitch, profile: Profile = SIM, **kw: Any) -> SnmpPoeBackend:
    be = SnmpPoeBackend(_switch(agent.port, **kw), profile, timeout=0.5, retries=0)
    await be.start()
    return be


@pytest.mark.parametrize("snmp", [SnmpV2c(community="private"), V3], ids=["v2c", "v3-authPriv"])
def test_switching_a_port_off_and_on_is_seen_in_status_watts_and_by_the_attached_device(
    snmp: SnmpV2c | SnmpV3,
) -> None:
    async def scenario(agent: SimPoeSwitch) -> None:
        seen: list[tuple[int, bool]] = []
        agent.on_port_change(lambda port, on: seen.append((port, on)))
        agent.set_load(3, 1.0)
        be = await backend(agent, snmp=snmp)
        try:
            before = await be.status([1, 2, 3])
            assert [s.state for s in before.values()] == [PowerState.ON] * 3
            assert before[1].watts == pytest.approx(2.5)
            assert before[3].watts == pytest.approx(7.5)  # full load, read in mW, normalised
            assert before[3].outlet == "sw1:3" and before[3].detail == "deliveringPower"

            await be.set_power(3, False)
            assert seen == [(3, False)]
            off = (await be.status([3]))[3]
            assert (off.admin_on, off.state, off.watts, off.detail) == (
                False,
                PowerState.OFF,
                0.0,
                "disabled",
            )
            assert not agent.model.port(3).admin_on

            await be.set_power(3, True)
            assert seen == [(3, False), (3, True)]
            assert (await be.status([3]))[3].state is PowerState.ON
            pse = await be.pse()
            assert (pse.budget_w, pse.consumption_w) == (370.0, round(7 * 2.5 + 7.5))
        finally:
            await be.stop()

    run(scenario)


def test_an_async_port_callback_runs_as_a_task_of_the_switch() -> None:
    async def scenario(agent: SimPoeSwitch) -> None:
        booted = asyncio.Event()

        async def boot(port: int, on: bool) -> None:
            await asyncio.sleep(0)
            if on:
                booted.set()

        agent.on_port_change(boot)
        be = await backend(agent)
        try:
            await be.set_power(5, False)
            await be.set_power(5, True)
            await asyncio.wait_for(booted.wait(), 2)
        finally:
            await be.stop()

    run(scenario)


def test_ports_beyond_the_budget_report_a_fault_and_come_up_when_it_is_raised() -> None:
    async def scenario(agent: SimPoeSwitch) -> None:
        seen: list[tuple[int, bool]] = []
        agent.on_port_change(lambda port, on: seen.append((port, on)))
        be = await backend(agent)
        try:
            status = await be.status(list(range(1, 9)))
            assert [s.state for s in status.values()] == [PowerState.ON] * 4 + [PowerState.FAULT] * 4
            assert status[5].detail == "otherFault" and status[5].watts == 0.0 and status[5].admin_on
            agent.set_budget(45)
            assert seen == [(5, True), (6, True)]
            assert (await be.status([6, 7]))[7].state is PowerState.FAULT
            agent.set_fault(6, True)
            assert (await be.status([6]))[6].detail == "fault"
        finally:
            await be.stop()

    run(scenario, budget_w=30)


def test_a_wrong_community_is_silence_reported_as_a_timeout_naming_the_port() -> None:
    async def scenario(agent: SimPoeSwitch) -> None:
        be = await backend(agent, snmp=SnmpV2c(community="guess"))
        try:
            with pytest.raises(PowerError) as err:
                await be.status([2])
            assert err.value.cause == "timeout" and err.value.outlet == "sw1:2"
            assert "wrong community" in str(err.value)
        finally:
            await be.stop()

    run(scenario)


@pytest.mark.parametrize(
    "bad",
    [
        SnmpV3(
            user="ops",
            auth_protocol="sha256",
            auth_key="wrong-auth-1",
            priv_protocol="aes",
            priv_key="priv-secret-1",
        ),
        SnmpV3(
            user="ops",
            auth_protocol="sha256",
            auth_key="auth-secret-1",
            priv_protocol="aes",
            priv_key="wrong-priv-1",
        ),
        SnmpV3(
            user="eve",
            auth_protocol="sha256",
            auth_key="auth-secret-1",
            priv_protocol="aes",
            priv_key="priv-secret-1",
        ),
    ],
    ids=["auth-key", "priv-key", "user"],
)
def test_wrong_v3_credentials_are_an_auth_error_from_the_report_pdu(bad: SnmpV3) -> None:
    async def scenario(agent: SimPoeSwitch) -> None:
        be = await backend(agent, snmp=bad)
        try:
            with pytest.raises(PowerError) as err:
                await be.set_power(4, False)
            assert err.value.cause == "auth" and err.value.outlet == "sw1:4"
            assert agent.model.port(4).admin_on  # nothing was switched
        finally:
            await be.stop()

    run(scenario)


def test_a_read_only_community_cannot_switch_ports() -> None:
    async def scenario(agent: SimPoeSwitch) -> None:
        be = await backend(agent, snmp=SnmpV2c(community="public"))
        try:
            assert (await be.status([1]))[1].state is PowerState.ON
            with pytest.raises(PowerError) as err:
                await be.set_power(1, False)
            assert (err.value.outlet, err.value.cause) == ("sw1:1", "auth")
            assert agent.model.port(1).admin_on
        finally:
            await be.stop()

    run(scenario)


def test_a_port_the_switch_lacks_is_no_such_object_for_reads_and_writes() -> None:
    async def scenario(agent: SimPoeSwitch) -> None:
        be = await backend(agent)
        try:
            with pytest.raises(PowerError) as err:
                await be.status([1, 9, 12])
            assert (err.value.cause, err.value.outlet) == ("no-such-object", "sw1:9")
            assert "1.3.6.1.2.1.105.1.1.1.3.1.9" in str(err.value) and "also ports 12" in str(err.value)
            with pytest.raises(PowerError) as err:
                await be.set_power(9, False)
            assert (err.value.cause, err.value.outlet) == ("no-such-object", "sw1:9")
        finally:
            await be.stop()

    run(scenario)


def test_a_profile_oid_the_switch_does_not_implement_is_no_such_object() -> None:
    cisco = load_profiles()["cisco"]

    async def scenario(agent: SimPoeSwitch) -> None:
        be = await backend(agent, profile=cisco)
        try:
            with pytest.raises(PowerError) as err:
                await be.status([2])
            assert err.value.cause == "no-such-object" and "1.3.6.1.4.1.9.9.402.1.2.1.9.1.2" in str(err.value)
        finally:
            await be.stop()

    run(scenario)


def test_a_set_the_switch_refuses_is_wrong_value_and_changes_nothing() -> None:
    async def scenario(agent: SimPoeSwitch) -> None:
        agent.model.locked.add(6)
        be = await backend(agent)
        try:
            with pytest.raises(PowerError) as err:
                await be.set_power(6, False)
            assert (err.value.cause, err.value.outlet) == ("wrong-value", "sw1:6")
            assert agent.model.port(6).admin_on
        finally:
            await be.stop()

    run(scenario)


def test_ports_outside_the_profile_are_refused_before_any_request() -> None:
    narrow = Profile(name="narrow", description="4 ports", max_port=4, port_power=SIM.port_power)

    async def scenario(agent: SimPoeSwitch) -> None:
        be = await backend(agent, profile=narrow)
        try:
            with pytest.raises(PowerError) as err:
                await be.set_power(5, False)
            assert (err.value.cause, err.value.outlet) == ("not-in-profile", "sw1:5")
            assert agent.model.port(5).admin_on
        finally:
            await be.stop()

    run(scenario)


def test_the_pse_group_offset_and_mw_consumption_quirk_come_from_inventory_and_profile() -> None:
    quirky = Profile(
        name="quirky",
        description="PSE consumption in mW, PSE ports numbered from 101",
        peth=PethOids(main_consumption_unit="mW"),
        port_power=SIM.port_power,
    )

    async def scenario(agent: SimPoeSwitch) -> None:
        be = await backend(agent, profile=quirky, group=3)
        try:
            pse = await be.pse()
            assert pse.consumption_w == pytest.approx(8 * 2.5, abs=0.001)
            assert (await be.status([8]))[8].watts == pytest.approx(2.5)
        finally:
            await be.stop()

    run(scenario, group=3, consumption_in_mw=True)


def test_status_splits_its_get_when_the_switch_answers_too_big() -> None:
    async def scenario(agent: SimPoeSwitch) -> None:
        be = await backend(agent)
        be.max_varbinds = 3 * 40
        try:
            status = await be.status(list(range(1, 41)))
            assert len(status) == 40 and status[40].state is PowerState.ON
        finally:
            await be.stop()

    run(scenario, max_varbinds=64, ports=40, budget_w=1000)


@pytest.mark.skipif(shutil.which("snmpget") is None, reason="net-snmp's snmpget is absent (apt: snmp)")
def test_the_standalone_sim_switch_answers_net_snmp() -> None:
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "scalerunner"),
            "sim",
            "switch",
            "--ports",
            "4",
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        where = proc.stdout.readline().strip()
        assert where.startswith("udp:127.0.0.1:")
        agent = where.removeprefix("udp:")
        base = ["-v2c", "-c", "public", "-On", "-t", "2", "-r", "1", agent]
        done = subprocess.run(
            ["snmpset", *base, ".1.3.6.1.2.1.105.1.1.1.3.1.2", "i", "2"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        got = subprocess.run(
            ["snmpget", "-Oqv", *base, ".1.3.6.1.2.1.105.1.1.1.6.1.1", ".1.3.6.1.2.1.105.1.1.1.6.1.2"],
            capture_output=True,
            text=True,
        )
        assert got.stdout.split() == ["3", "1"]  # deliveringPower, disabled
    finally:
        proc.terminate()
        proc.wait(10)
