"""Where the serial clients connect: a node's port from the inventory, and each firmware's line rate."""

from __future__ import annotations

import asyncio
import os
import termios
import tty
from pathlib import Path

import pytest

from scalerunner.coordinator.inventory import loads_inventory
from scalerunner.coordinator.serial import BmcClient, DeviceClient, LedClient
from scalerunner.coordinator.serial.ports import NodePortError, node_port

INVENTORY = """
[cluster]
name = "desk"

[[nodes]]
name = "a"
mac = "02:00:00:00:00:01"
arch = "arm64"
bmc_port = "/dev/ttyUSB1"

[[nodes]]
name = "b"
mac = "02:00:00:00:00:02"
arch = "arm64"
led_port = "/dev/ttyUSB0"
"""


def test_a_node_s_port_comes_from_its_key_and_errors_name_node_key_and_file(tmp_path: Path) -> None:
    source = str(tmp_path / "scalerunner.toml")
    inv = loads_inventory(INVENTORY, source)
    found = node_port(inv, "a", "bmc_port", source)
    assert found.port == "/dev/ttyUSB1"
    assert found.describe() == f"node a (bmc_port /dev/ttyUSB1 in {source})"
    assert node_port(inv, "b", "led_port", source).port == "/dev/ttyUSB0"
    with pytest.raises(NodePortError) as err:
        node_port(inv, "b", "bmc_port", source)
    assert err.value.key == "bmc_port" and str(err.value) == f"{source}: nodes[1] (b) has no bmc_port"
    with pytest.raises(NodePortError) as err:
        node_port(inv, "c", "led_port", source)
    assert err.value.key is None and str(err.value) == f"{source}: no node named 'c' (nodes: a, b)"


@pytest.mark.parametrize(("client", "speed"), [(BmcClient, termios.B1000000), (LedClient, termios.B115200)])
def test_each_client_opens_its_port_at_its_firmware_s_rate(client: type[DeviceClient], speed: int) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)

    async def opened() -> list[int]:
        async with client(path) as dev:
            assert dev.name == path
            return termios.tcgetattr(slave)

    try:
        attrs = asyncio.run(opened())
    finally:
        os.close(master)
        os.close(slave)
    assert (attrs[4], attrs[5]) == (speed, speed)
