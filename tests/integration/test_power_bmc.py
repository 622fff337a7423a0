"""The power manager with the ``bmc`` back end against the real BMC firmware (bmc/main.py under the
MicroPython unix port on a pty): on, off and cycle, bulk with per-node results, per-port locking,
a rail fault, a silent BMC, an operator's action cancelling an automated cycle, and energy from
sampled power in a real SQLite store.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scalerunner.coordinator.inventory import inventory_from_dict
from scalerunner.coordinator.power.base import PowerState
from scalerunner.coordinator.power.bmc import BmcBackend
from scalerunner.coordinator.power.manager import PowerManager
from scalerunner.coordinator.power.sequence import Op, SequenceConfig
from scalerunner.coordinator.store import SqliteStore
from scalerunner.firmware import micropypath
from scalerunner.protocol.link import FdStream
from tests.mpy_support import micropython_binary

pytestmark = [pytest.mark.micropython, pytest.mark.slow, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
FAST = SequenceConfig(min_off=0.5, off_timeout=3, on_timeout=3, poll_interval=0.05)

StartBmc = Callable[..., BmcBackend]


@pytest.fixture
def start_bmc() -> Iterator[StartBmc]:
    """Runs one BMC firmware per call on a pty; the back end opens the pty's master."""
    procs: list[tuple[subprocess.Popen[bytes] | None, int, int]] = []

    def start(name: str, *settings: str, silent: bool = False) -> BmcBackend:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        path = os.ttyname(slave)
        proc = None
        if not silent:
            proc = subprocess.Popen(
                [micropython_binary(), str(REPO / "bmc/main.py"), path, "min_off_ms=200", *settings],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "MICROPYPATH": micropypath(REPO / "bmc")},
            )
        procs.append((proc, master, slave))
        # a silent BMC is found out within 1 s; a live one gets time to start on a loaded machine
        timeout = 1.0 if silent else 5.0
        return BmcBackend(name, timeout=timeout, opener=lambda: FdStream(os.dup(master), f"pty:{name}"))

    try:
        yield start
    finally:
        for proc, master, slave in procs:
            os.close(master)  # the firmware exits when its line closes
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            os.close(slave)


def inventory(*bmcs: str, bare: tuple[str, ...] = ()) -> object:
    nodes = [
        {"name": f"n{i + 1}", "mac": f"02:00:00:00:00:{i + 1:02x}", "arch": "arm64", "bmc_port": port}
        for i, port in enumerate(bmcs)
    ]
    nodes += [
        {"name": name, "mac": f"02:00:00:00:01:{i + 1:02x}", "arch": "arm64"} for i, name in enumerate(bare)
    ]
    return inventory_from_dict({"cluster": {"name": "lab"}, "nodes": nodes}, "/tmp/scalerunner.toml")


def manager(backends: list[BmcBackend], store: SqliteStore | None = None, **kw: object) -> PowerManager:
    inv = inventory(*(b.serial_port for b in backends), bare=("n9",))
    return PowerManager(inv, {b.name: b for b in backends}, store, config=FAST, **kw)  # type: ignore[arg-type]


def transitions(entries: list[object]) -> list[str]:
    """The rail states the BMC entered, in order, from its log ("ON -> STOPPING: OFF")."""
    out = []
    for e in entries:
        _old, arrow, rest = getattr(e, "text", "").partition(" -> ")
        if arrow:
            out.append(rest.split(":", 1)[0])
    return out


def test_on_cycle_off_and_a_bulk_action_through_the_real_bmc_firmware(start_bmc: StartBmc) -> None:
    b1, b2 = start_bmc("/dev/bmc-a"), start_bmc("/dev/bmc-b")

    async def main() -> None:
        pm = manager([b1, b2])
        await pm.start()
        try:
            on = await pm.run("n1", Op.ON)
            assert (on.outlet, on.state, on.detail) == ("bmc:/dev/bmc-a", PowerState.ON, "ON")
            assert on.watts is not None and on.watts > 0
            t0 = time.monotonic()
            cycled = await pm.run("n1", Op.CYCLE)
            assert cycled.state is PowerState.ON and time.monotonic() - t0 >= FAST.min_off
            log = transitions(await b1.log())
            assert log[-4:] == ["STOPPING", "OFF", "STARTING", "ON"], log
            results = await pm.bulk(["n1", "n2", "n9", "n1"], Op.OFF)
            assert [(r.node, r.ok, r.cause) for r in results] == [
                ("n1", True, ""),
                ("n2", True, ""),
                ("n9", False, "not-assigned"),
            ]
            assert results[2].message == "n9: the inventory gives this node no switch port or BMC"
            status = await pm.status(["n1", "n2"])
            assert [(r.state, r.watts) for r in status] == [("off", 0.0), ("off", 0.0)]
        finally:
            await pm.stop()

    asyncio.run(main())


def test_two_actions_on_one_outlet_never_interleave(start_bmc: StartBmc) -> None:
    b1 = start_bmc("/dev/bmc-a")

    async def main() -> None:
        pm = manager([b1])
        await pm.start()
        try:
            await pm.run("n1", Op.ON)
            since = len(await b1.log())
            first, second = await asyncio.gather(pm.run("n1", Op.CYCLE), pm.run("n1", Op.CYCLE))
            assert first.state is second.state is PowerState.ON
            log = transitions((await b1.log())[since:])
            # one whole cycle, then the other: never off, off, on, on
            assert log == ["STOPPING", "OFF", "STARTING", "ON"] * 2, log
        finally:
            await pm.stop()

    asyncio.run(main())


def test_a_rail_fault_and_a_silent_bmc_are_reported_per_node(start_bmc: StartBmc) -> None:
    bad = start_bmc("/dev/bmc-bad", "rail_mv=3000", "rail_timeout_ms=200")
    silent = start_bmc("/dev/bmc-silent", silent=True)

    async def main() -> None:
        pm = manager([bad, silent])
        await pm.start()
        try:
            results = await pm.bulk(["n1", "n2"], Op.ON)
            fault, timeout = results
            assert (fault.ok, fault.cause, fault.outlet) == (False, "fault", "bmc:/dev/bmc-bad")
            assert "switched on but reports a fault (FAULT)" in fault.message
            assert (timeout.ok, timeout.cause, timeout.outlet) == (False, "timeout", "bmc:/dev/bmc-silent")
            assert timeout.message.startswith("bmc:/dev/bmc-silent: on: the BMC did not answer")
            assert "not confirmed on" in timeout.message
            assert dict(pm.failures) == {"fault": 1, "timeout": 1}
        finally:
            await pm.stop()

    asyncio.run(main())


def test_an_operator_off_cancels_an_automated_cycle_and_both_are_recorded(
    start_bmc: StartBmc, tmp_path: Path
) -> None:
    b1 = start_bmc("/dev/bmc-a")

    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            pm = manager([b1], store)
            pm.config = SequenceConfig(min_off=5.0, off_timeout=3, on_timeout=3, poll_interval=0.05)
            await pm.start()
            try:
                await pm.run("n1", Op.ON)
                recovery = pm.submit("n1", Op.CYCLE, automated=True, reason="recovery power-cycle 1 of 3")
                assert recovery is not None
                await asyncio.sleep(0.5)  # the cycle holds the node off now
                off = pm.submit("n1", Op.OFF, automated=False, reason="operator request")
                assert off is not None
                assert pm.submit("n1", Op.ON, automated=True) is None  # not while the operator's runs
                assert (await off).state is PowerState.OFF
                assert recovery.cancelled()
                await asyncio.sleep(FAST.min_off + 0.3)
                assert (await pm.status(["n1"]))[0].state == "off"  # the cancelled cycle did not switch it on
                await asyncio.sleep(0.1)
                events = [(e.new, e.reason) for e in await store.list_events(node="n1")]
                assert events[0][0] == "cycle cancelled" and events[0][1].startswith("automatic: recovery")
                assert events[1][0] == "off ok" and events[1][1].startswith("operator: operator request")
            finally:
                await pm.stop()

    asyncio.run(main())


def test_sampled_power_gives_energy_per_node(start_bmc: StartBmc, tmp_path: Path) -> None:
    b1, b2 = start_bmc("/dev/bmc-a"), start_bmc("/dev/bmc-b")

    async def main() -> None:
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            pm = manager([b1, b2], store, sample_interval=0.2)
            await pm.run("n1", Op.ON)
            t0 = time.time()
            await pm.start()  # the sampler reads both outlets every 0.2 s
            await asyncio.sleep(2.0)
            await pm.stop()
            t1 = time.time()
            on = await pm.energy("n1", t0, t1)
            off = await pm.energy("n2", t0, t1)
            watts = pm.watts["n1"][1]
            assert watts > 0 and on.samples >= 4
            assert on.mean_w == pytest.approx(watts, rel=0.05)
            assert on.wh == pytest.approx(watts * on.covered_s / 3600, rel=0.05)
            assert off.wh == 0 and off.samples >= 4
            assert pm.energy_wh["n1"] == pytest.approx(on.wh, rel=0.3)

    asyncio.run(main())
