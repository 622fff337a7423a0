"""The host side of the BMC firmware (bmc/README.md): power, boot mode, status, event log, console."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from ...protocol.enums import BootMode, EventLevel, MsgType, PowerAction, PowerState
from ...protocol.errors import PeerTimeout
from ...protocol.link import ByteStream
from ...protocol.messages import Message
from ._base import DEFAULT_TIMEOUT, DeviceClient, _int, _str, enum_value

BMC_BAUD = 1_000_000  # the BMC's host line (bmc/hal_rp2.py: UART0 at 1 Mbaud)


@dataclass(frozen=True)
class BmcStatus:
    power_state: PowerState
    rail_v: float
    current_a: float
    power_w: float
    temp_c: float

    def as_dict(self) -> dict[str, object]:
        return {
            "power_state": self.power_state.name,
            "rail_v": self.rail_v,
            "current_a": self.current_a,
            "power_w": self.power_w,
            "temp_c": self.temp_c,
        }


@dataclass(frozen=True)
class LogEntry:
    """One event of the BMC's log ring."""

    index: int
    level: EventLevel | int
    code: int
    time_ms: int
    text: str

    def as_dict(self) -> dict[str, object]:
        level = self.level.name if isinstance(self.level, EventLevel) else self.level
        return {
            "index": self.index,
            "level": level,
            "code": self.code,
            "time_ms": self.time_ms,
            "text": self.text,
        }


def _number(enum_cls: type[PowerAction] | type[BootMode], value: object) -> int:
    """A name or member, checked; a bare number goes to the device as is (it judges it)."""
    if isinstance(value, int) and not isinstance(value, enum.IntEnum):
        return value
    assert isinstance(value, str | enum.IntEnum)
    return int(enum_value(enum_cls, value))


def _status(msg: Message) -> BmcStatus:
    raw = _int(msg, "power_state")
    state = PowerState(raw) if raw in PowerState._value2member_map_ else PowerState.FAULT
    return BmcStatus(
        power_state=state,
        rail_v=_int(msg, "rail_mv") / 1000,
        current_a=_int(msg, "current_ma") / 1000,
        power_w=_int(msg, "power_mw") / 1000,
        temp_c=_int(msg, "temp_dc") / 10,
    )


def _is_status(msg: Message) -> bool:
    return msg.type == MsgType.STATUS


class BmcClient(DeviceClient):
    """``async with BmcClient("/dev/ttyACM1") as bmc: await bmc.power("on"); print(await bmc.status())``.

    ``power`` and ``boot_mode`` are followed by STATUS_GET, so a refusal (ERROR BUSY, BAD_VALUE) raises
    DeviceError and success returns the status afterwards. ``console`` is the node's serial console
    (``await bmc.console.write(b"...")``, ``await bmc.console.read()``).
    """

    def __init__(
        self, port: str | ByteStream, *, baud: int = BMC_BAUD, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__(port, baud=baud, timeout=timeout)

    async def status(self) -> BmcStatus:
        return _status(
            await self._exchange([Message.make("STATUS_GET")], _is_status, refs={MsgType.STATUS_GET})
        )

    async def power(self, action: PowerAction | str | int) -> BmcStatus:
        """``action``: on, off, cycle, reset, button, button_long (or a PowerAction)."""
        msg = Message.make("POWER", action=_number(PowerAction, action))
        answer = await self._exchange(
            [msg, Message.make("STATUS_GET")], _is_status, refs={MsgType.POWER, MsgType.STATUS_GET}
        )
        return _status(answer)

    async def boot_mode(self, mode: BootMode | str | int) -> BmcStatus:
        """The boot mode for the next power-on: normal, network, usb, recovery (or a BootMode)."""
        msg = Message.make("BOOT_MODE", mode=_number(BootMode, mode))
        answer = await self._exchange(
            [msg, Message.make("STATUS_GET")], _is_status, refs={MsgType.BOOT_MODE, MsgType.STATUS_GET}
        )
        return _status(answer)

    async def events(self, since: int = 0) -> list[LogEntry]:
        """The logged events with index >= ``since``, oldest first (read up to the end marker)."""
        entries: list[LogEntry] = []

        def collect(msg: Message) -> bool:
            if msg.type != MsgType.EVENT_LOG:
                return False
            index, nxt = _int(msg, "index"), _int(msg, "next")
            if index == nxt:
                return True
            raw = _int(msg, "level")
            level: EventLevel | int = EventLevel(raw) if raw in EventLevel._value2member_map_ else raw
            entries.append(LogEntry(index, level, _int(msg, "code"), _int(msg, "time_ms"), _str(msg, "text")))
            return False

        await self._exchange(
            [Message.make("EVENT_LOG_GET", since=since)], collect, refs={MsgType.EVENT_LOG_GET}
        )
        return entries

    @property
    def console(self) -> BmcConsole:
        return BmcConsole(self)


class BmcConsole:
    """The node's serial console (CONSOLE_DATA port 0) through the BMC."""

    def __init__(self, client: BmcClient, port: int = 0) -> None:
        self._client = client
        self._port = port

    async def write(self, data: bytes) -> None:
        """Queue ``data`` for the node and wait until the BMC has acknowledged it."""
        console = self._client.link.console
        try:
            async with asyncio.timeout(self._client.timeout):
                await console.write(data, self._port)
                await console.drain()
        except TimeoutError:
            raise PeerTimeout(self._client.name, "console write not acknowledged") from None

    async def read(self) -> bytes:
        """The next bytes from the node (waits for at least one)."""
        return await self._client.link.console.read(self._port)


__all__ = ["BMC_BAUD", "BmcClient", "BmcConsole", "BmcStatus", "LogEntry"]
