"""What the tests that run code under the real MicroPython unix port share."""

from __future__ import annotations

import asyncio

import pytest

from scalerunner.firmware import find_tool
from scalerunner.protocol import Message, MsgType
from scalerunner.protocol.link import Link


def require_tool(name: str) -> str:
    """The path of a MicroPython tool (micropython, mpy-cross); the test fails if it is missing."""
    found = find_tool(name)
    if found is None:
        pytest.fail(f"{name} is not installed (make setup installs it)")
    return found


def micropython_binary() -> str:
    return require_tool("micropython")


async def recv_type(
    link: Link, msg_type: MsgType, seen: list[Message] | None = None, within: float = 5.0
) -> Message:
    """The next message of ``msg_type`` within ``within`` seconds; others are kept in ``seen``."""
    async with asyncio.timeout(within):
        while True:
            msg = await link.recv()
            if msg.type == msg_type:
                return msg
            if seen is not None:
                seen.append(msg)
