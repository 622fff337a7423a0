"""The ``bmc`` power back end: one node's BMC over its serial link (one outlet, port 1).

The link is opened on first use and kept; a link that fails is closed and opened again on the
next request, so a BMC unplugged and plugged back needs no coordinator restart. Every failure
is a PowerError naming ``bmc:<serial port>``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ...protocol.enums import PowerState as BmcPowerState
from ...protocol.errors import LinkError, PeerTimeout
from ...protocol.link import ByteStream
from ..serial._base import DeviceError
from ..serial.bmc import BmcClient, LogEntry
from .base import OutletStatus, PowerError, PowerState
from .outlets import bmc_device

__all__ = ["BmcBackend"]

T = TypeVar("T")

# The BMC's rail states as outlet states: a stopping rail still delivers power.
_STATES = {
    BmcPowerState.OFF: PowerState.OFF,
    BmcPowerState.ON: PowerState.ON,
    BmcPowerState.STARTING: PowerState.SEARCHING,
    BmcPowerState.STOPPING: PowerState.ON,
    BmcPowerState.FAULT: PowerState.FAULT,
}


class BmcBackend:
    def __init__(
        self, serial_port: str, *, timeout: float = 2.0, opener: Callable[[], ByteStream] | None = None
    ) -> None:
        """``opener``: how to open the link when it is not a path (a pty's master in tests)."""
        self.serial_port = serial_port
        self._opener = opener
        self.name = bmc_device(serial_port)
        self.timeout = timeout
        self._client: BmcClient | None = None
        self._lock = asyncio.Lock()
        self._admin_on: bool | None = None

    async def start(self) -> None:
        """Nothing to open yet: the link opens on first use (a missing BMC fails per request)."""

    async def stop(self) -> None:
        await self._close()

    async def set_power(self, port: int, on: bool) -> None:
        self._check(port)
        await self._call(lambda bmc: bmc.power("on" if on else "off"))
        self._admin_on = on

    async def status(self, ports: list[int]) -> dict[int, OutletStatus]:
        for port in ports:
            self._check(port)
        if not ports:
            return {}
        st = await self._call(lambda bmc: bmc.status())
        state = _STATES.get(st.power_state, PowerState.UNKNOWN)
        admin = self._admin_on if self._admin_on is not None else state is not PowerState.OFF
        status = OutletStatus(self.name, admin, state, st.power_w, st.power_state.name)
        return dict.fromkeys(ports, status)

    def _check(self, port: int) -> None:
        if port != 1:
            raise PowerError(f"{self.name}:{port}", "not-in-profile", "a BMC has one outlet, port 1")

    async def log(self, since: int = 0) -> list[LogEntry]:
        """The BMC's own event log (what it did, with its reasons), for operators and tests."""
        return await self._call(lambda bmc: bmc.events(since))

    async def _call(self, request: Callable[[BmcClient], Awaitable[T]]) -> T:
        async with self._lock:
            try:
                if self._client is None:
                    port = self._opener() if self._opener is not None else self.serial_port
                    client = BmcClient(port, timeout=self.timeout)
                    await client.__aenter__()
                    self._client = client
                return await request(self._client)
            except PeerTimeout as exc:
                await self._close()
                raise PowerError(self.name, "timeout", f"the BMC did not answer: {exc}") from exc
            except DeviceError as exc:
                raise PowerError(self.name, "wrong-value", f"the BMC refused: {exc.detail}") from exc
            except (OSError, LinkError) as exc:
                await self._close()
                raise PowerError(
                    self.name, "unreachable", f"cannot reach it: {getattr(exc, 'strerror', None) or exc}"
                ) from exc

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(OSError):  # the link is gone already; nothing more to close
                await client.__aexit__(None, None, None)
