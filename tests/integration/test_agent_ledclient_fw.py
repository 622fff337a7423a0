"""The agent's own LED client (nodeagent/ledclient.py) against the real LED firmware (ledfw/main.py under
the MicroPython unix port, on a pty): each request answered with the state it produced, a refused value
raised naming the port and leaving the client usable, and a second client after the first one (the
firmware's leftover answers are fenced off)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from scalerunner.nodeagent.ledclient import AgentLedClient, LedRefused
from scalerunner.protocol.enums import LedMode
from tests.integration.test_agent_ledfw_drive import TappedLed

pytestmark = [pytest.mark.micropython, pytest.mark.slow, pytest.mark.timeout(60)]


@pytest.fixture
def led() -> Iterator[TappedLed]:
    fw = TappedLed()
    try:
        yield fw
    finally:
        fw.close()


def test_requests_get_the_state_they_produced_and_a_refused_value_names_the_port(led: TappedLed) -> None:
    async def scenario() -> None:
        async with AgentLedClient(led.path, timeout=5) as client:
            for _ in range(100):  # the firmware sweeps its self-test first (ledfw/README.md)
                if (await client.state()).mode != "SELFTEST":
                    break
                await asyncio.sleep(0.05)
            assert (await client.set_mode(int(LedMode.IDENTIFY))).mode == "IDENTIFY"
            assert (await client.gauge(50, 45.0)).mode == "IDENTIFY"  # the gauge is fed, not shown
            assert (await client.set_mode(int(LedMode.GAUGE))).mode == "GAUGE"
            with pytest.raises(
                LedRefused, match=f"{led.path}: LED_SET refused: code 3: 'bad value: LED mode 99'"
            ):
                await client.set_mode(99)
            assert (await client.state()).mode == "GAUGE"  # still usable
            assert client.core.drops == {}  # nothing on the line was malformed or out of order
        async with AgentLedClient(led.path, timeout=5) as again:  # a second host on the same line
            assert (await again.set_mode(int(LedMode.OFF))).mode == "OFF"

    asyncio.run(scenario())
    assert [s.mode for s in led.states][-1] == "OFF"
