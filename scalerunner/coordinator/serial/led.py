"""The host side of the LED indicator firmware (ledfw/README.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...protocol.enums import LedMode, MsgType
from ...protocol.messages import Message
from ._base import DeviceClient, _str, enum_value

LED_BAUD = 115_200  # the LED indicator's host line (ledfw/hal_rp2.py: UART0 at 115 200 baud)
EV_STATE = 0x0110  # the EVENT that answers STATUS_GET: "mode=NAME lost=N px=HEX"
_STATE_RE = re.compile(r"mode=(\w+) lost=(\d+) px=([0-9a-fA-F]*)")


@dataclass(frozen=True)
class LedState:
    """What the LED firmware shows: the mode it renders, how often it lost the host, the pixel bytes."""

    mode: str
    lost: int
    pixels: bytes

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "lost": self.lost, "pixels": self.pixels.hex()}


def parse_state(text: str) -> LedState:
    m = _STATE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not an LED state: {text!r}")
    return LedState(m.group(1), int(m.group(2)), bytes.fromhex(m.group(3)))


def _is_state(msg: Message) -> bool:
    return msg.type == MsgType.EVENT and msg.fields.get("code") == EV_STATE


class LedClient(DeviceClient):
    """``async with LedClient("/dev/ttyACM0") as led: await led.set_mode(LedMode.SOLID, rgb=(0, 80, 0))``.

    Every command is followed by STATUS_GET, so it returns the state it produced, and an ERROR the
    firmware answered with surfaces as DeviceError.
    """

    async def _then_state(self, msg: Message | None) -> LedState:
        sends = ([msg] if msg is not None else []) + [Message.make("STATUS_GET")]
        refs = {MsgType.STATUS_GET} | ({msg.type} if msg is not None else set())
        answer = await self._exchange(sends, _is_state, refs=refs)
        return parse_state(_str(answer, "text"))

    async def set_mode(
        self,
        mode: LedMode | str,
        *,
        rgb: tuple[int, int, int] = (255, 255, 255),
        brightness: int = 255,
        period_ms: int = 0,
    ) -> LedState:
        mode_value = enum_value(LedMode, mode)
        r, g, b = rgb
        msg = Message.make(
            "LED_SET", mode=int(mode_value), r=r, g=g, b=b, brightness=brightness, period_ms=period_ms
        )
        return await self._then_state(msg)

    async def gauge(self, load_pct: int, temp_c: float) -> LedState:
        """Feed the gauge (shown in GAUGE mode): load 0..100 %, temperature in °C."""
        msg = Message.make("LED_GAUGE", load_pct=load_pct, temp_dc=round(temp_c * 10))
        return await self._then_state(msg)

    async def identify(self) -> LedState:
        return await self.set_mode(LedMode.IDENTIFY)

    async def off(self) -> LedState:
        return await self.set_mode(LedMode.OFF)

    async def state(self) -> LedState:
        return await self._then_state(None)


__all__ = ["EV_STATE", "LED_BAUD", "LedClient", "LedState", "parse_state"]
