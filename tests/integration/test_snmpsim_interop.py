"""The snmp-poe back end against snmpsim, an SNMP agent we did not write, serving the walk in
tests/data/snmpsim/poe-switch.snmprec (a 24-port Catalyst-like switch, Cisco profile) with
pethPsePortAdminEnable writable through snmpsim's writecache variation module.

snmpsim runs as MACHINE.md says it must here: from the venv tools/setup-snmpsim.sh makes with
Debian's python3 (``make setup`` runs it), dropping to nobody/nogroup, with data and cache
directories that user can read and write.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scalerunner.coordinator.inventory import SnmpV2c, Switch
from scalerunner.coordinator.power.base import PowerError, PowerState
from scalerunner.coordinator.power.profiles import load_profiles
from scalerunner.coordinator.power.snmp_poe import SnmpPoeBackend

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

WALK = Path(__file__).resolve().parents[1] / "data" / "snmpsim" / "poe-switch.snmprec"
VENV = Path(os.environ.get("SCALERUNNER_SNMPSIM_VENV", "/opt/scalerunner/snmpsim"))
RESPONDER = VENV / "bin" / "snmpsim-command-responder"
CISCO = load_profiles()["cisco"]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(log: Path) -> bool:
    """snmpsim logs this line once its indices are built and its socket is bound."""
    return "Listening at UDP/IPv4 endpoint" in log.read_text(errors="replace")


@pytest.fixture
def snmpsim() -> Iterator[int]:
    """snmpsim serving the walk as community "public"; yields its UDP port."""
    if not RESPONDER.exists():
        pytest.skip(f"snmpsim is not installed at {VENV}: run `make setup` (tools/setup-snmpsim.sh)")
    root = Path(tempfile.mkdtemp(prefix="scalerunner-snmpsim-"))
    data, cache = root / "data", root / "cache"
    data.mkdir()
    cache.mkdir()
    shutil.copy(WALK, data / "public.snmprec")
    # nobody reads the data and writes the cache (index files and the writecache store).
    root.chmod(0o755)
    data.chmod(0o755)
    (data / "public.snmprec").chmod(0o644)
    shutil.chown(cache, "nobody", "nogroup")
    port = _free_udp_port()
    log = (root / "snmpsim.log").open("w")
    proc = subprocess.Popen(
        [
            str(RESPONDER),
            f"--data-dir={data}",
            f"--cache-dir={cache}",
            f"--agent-udpv4-endpoint=127.0.0.1:{port}",
            "--process-user=nobody",
            "--process-group=nogroup",
            f"--variation-module-options=writecache:file:{cache}/writecache.db",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not _listening(root / "snmpsim.log"):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"snmpsim did not come up: {(root / 'snmpsim.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _backend(port: int, community: str = "public") -> SnmpPoeBackend:
    switch = Switch(
        name="poe1", address="127.0.0.1", port=port, profile="cisco", snmp=SnmpV2c(community=community)
    )
    return SnmpPoeBackend(switch, CISCO, timeout=1.0, retries=1)


def test_the_recorded_switch_is_read_through_the_cisco_profile(snmpsim: int) -> None:
    async def scenario() -> None:
        be = _backend(snmpsim)
        await be.start()
        try:
            status = await be.status(list(range(1, 25)))  # one GET of 72 objects (the 64 cap is GETBULK's)
            assert status[1].state is PowerState.ON and status[1].watts == pytest.approx(4.226)
            assert status[2].watts == pytest.approx(6.782)
            assert status[21].state is PowerState.SEARCHING and status[21].watts == 0
            assert (status[23].admin_on, status[23].state) == (False, PowerState.OFF)
            assert (status[24].state, status[24].detail) == (PowerState.FAULT, "otherFault")
            assert sum(s.watts or 0 for s in status.values()) == pytest.approx(89.340)
            pse = await be.pse()
            assert (pse.budget_w, pse.consumption_w) == (370.0, 89.0)
        finally:
            await be.stop()

    asyncio.run(scenario())


def test_admin_enable_sets_are_written_and_refusals_reported(snmpsim: int) -> None:
    async def scenario() -> None:
        be = _backend(snmpsim)
        await be.start()
        try:
            await be.set_power(5, False)
            assert not (await be.status([5]))[5].admin_on
            await be.set_power(23, True)
            assert (await be.status([23]))[23].admin_on
            with pytest.raises(PowerError) as err:
                await be.set_power(30, False)  # the walk has 24 ports
            assert (err.value.cause, err.value.outlet) == ("no-such-object", "poe1:30")
            with pytest.raises(PowerError) as err:
                await be.status([30])
            assert (err.value.cause, err.value.outlet) == ("no-such-object", "poe1:30")
        finally:
            await be.stop()

    asyncio.run(scenario())


def test_an_unknown_community_gets_no_answer_from_snmpsim_either(snmpsim: int) -> None:
    async def scenario() -> None:
        be = _backend(snmpsim, community="nosuchfile")
        be.timeout, be.retries = 0.3, 0
        await be.start()
        try:
            with pytest.raises(PowerError) as err:
                await be.status([1])
            assert (err.value.cause, err.value.outlet) == ("timeout", "poe1:1")
        finally:
            await be.stop()

    asyncio.run(scenario())
