"""The agent's client of its LED indicator: the requests ``LedDriver`` makes, over ``StopAndWait``.

The coordinator's ``LedClient`` (coordinator/serial/led.py) does the same over the full protocol
stack (construct, the windowed ``Link``, pyserial): about 3.8 MB the agent's 30 MB budget cannot
spare. This one opens the port with ``os.open`` and termios (raw 8N1 at the baud rate, locked with
flock as pyserial's ``exclusive`` does) and speaks the protocol with the struct codec
(``protocol/lite.py``). Its behaviour is the coordinator client's: every command is followed by
STATUS_GET and answers with the state the firmware shows; the first request, and the first after a
timeout, is fenced by a PING whose PONG skips answers meant for an earlier request or host; an
ERROR refusing the request raises ``LedRefused``; silence raises ``PeerTimeout`` naming the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import termios
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from ..protocol.errors import LinkClosed, LinkError, PeerTimeout
from ..protocol.lite import TYPE_IDS, Fields
from .ledlink import StopAndWait

EV_STATE = 0x0110  # the EVENT that answers STATUS_GET (ledfw/fw.py; the coordinator's led.py agrees)
_STATE_RE = re.compile(r"mode=(\w+) lost=(\d+) px=([0-9a-fA-F]*)")
_T = TYPE_IDS
_READ_SIZE = 4096


@dataclass(frozen=True)
class LedShows:
    """What the firmware renders: its mode's name and how often it lost the host."""

    mode: str
    lost: int


def parse_shows(text: str) -> LedShows:
    m = _STATE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not an LED state: {text!r}")
    return LedShows(m.group(1), int(m.group(2)))


class LedRefused(LinkError):
    """The firmware answered a request with ERROR (its code and text are in ``detail``)."""


def open_tty(path: str, baud: int) -> int:
    """``path`` opened non-blocking, raw 8N1 at ``baud``, locked against a second opener."""
    speed = getattr(termios, f"B{baud}", None)
    if speed is None:
        raise LinkError(path, f"baud rate {baud} is not one termios knows")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise LinkError(path, f"cannot open: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[2] = (attrs[2] | termios.CLOCAL | termios.CREAD) & ~(termios.CSTOPB | termios.PARENB)
        attrs[4] = attrs[5] = speed
        attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except (OSError, termios.error) as exc:
        os.close(fd)
        raise LinkError(path, f"cannot set up the serial port at {baud} baud: {exc}") from exc
    return fd


class AgentLedClient:
    """``async with AgentLedClient("/dev/ttyACM0") as led: await led.gauge(40, 51.5)``."""

    def __init__(
        self,
        port: str,
        *,
        baud: int = 115200,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.baud = baud
        self.timeout = timeout
        self._clock = clock
        self.core = StopAndWait()
        self._fd = -1
        self._inbox: deque[tuple[int, Fields]] = deque(maxlen=256)
        self._wake = asyncio.Event()
        self._closed = False
        self._stale = True
        self._token = int.from_bytes(os.urandom(4), "little")  # tells our PONG from an earlier host's

    async def __aenter__(self) -> Self:
        self._fd = open_tty(self.port, self.baud)
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    # -- requests --

    async def gauge(self, load_pct: int, temp_c: float) -> LedShows:
        return await self._then_state(
            (_T["LED_GAUGE"], {"load_pct": load_pct, "temp_dc": round(temp_c * 10)})
        )

    async def set_mode(self, mode: int) -> LedShows:
        fields: Fields = {"mode": mode, "r": 255, "g": 255, "b": 255, "brightness": 255, "period_ms": 0}
        return await self._then_state((_T["LED_SET"], fields))

    async def state(self) -> LedShows:
        return await self._then_state(None)

    async def _then_state(self, msg: tuple[int, Fields] | None) -> LedShows:
        sends = ([msg] if msg is not None else []) + [(_T["STATUS_GET"], {})]
        refs = {t for t, _ in sends}
        what = next(name for name, t in _T.items() if t == sends[0][0])
        try:
            async with asyncio.timeout(self.timeout):
                if self._stale:
                    await self._fence()
                for type_id, fields in sends:
                    await self._send(type_id, fields)
                while True:
                    type_id, fields = await self._recv()
                    if type_id == _T["ERROR"] and fields["ref_type"] in refs:
                        text = fields["text"]
                        detail = f"{what} refused: code {fields['code']!r}: {text!r}"
                        raise LedRefused(self.port, detail)
                    if type_id == _T["EVENT"] and fields["code"] == EV_STATE:
                        text = fields["text"]
                        assert isinstance(text, str)
                        return parse_shows(text)
        except TimeoutError:
            self._stale = True
            raise PeerTimeout(self.port, f"no answer to {what} within {self.timeout:g} s") from None

    async def _fence(self) -> None:
        """PING, then skip everything before its PONG: late answers to an abandoned request."""
        self._token = (self._token + 1) & 0xFFFFFFFF
        await self._send(_T["PING"], {"token": self._token})
        while True:
            type_id, fields = await self._recv()
            if type_id == _T["PONG"] and fields["token"] == self._token:
                self._stale = False
                return

    # -- the line --

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:  # EIO: a pty whose other side closed; any other error ends the line too
            data = b""
        if not data:
            self._closed = True
            asyncio.get_running_loop().remove_reader(self._fd)
        else:
            self._inbox.extend(self.core.receive(data, self._clock()))
            self._flush()
        self._wake.set()

    def _flush(self) -> None:
        out = self.core.outgoing()
        with contextlib.suppress(BlockingIOError):  # a full line: the retransmission timer resends
            os.write(self._fd, out)

    async def _tick(self) -> None:
        """Wait for input or the retransmission deadline, whichever comes first."""
        if self._closed:
            raise LinkClosed(self.port, "the line closed")
        deadline = self.core.next_deadline()
        wait = None if deadline is None else max(deadline - self._clock(), 0.0)
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait)
        self.core.poll(self._clock())
        self._flush()

    async def _send(self, type_id: int, fields: Fields) -> None:
        self.core.send(type_id, fields, self._clock())
        self._flush()
        while self.core.busy:
            await self._tick()
        if self.core.failed:
            self._stale = True
            raise PeerTimeout(self.port, "the LED indicator stopped acknowledging")

    async def _recv(self) -> tuple[int, Fields]:
        while not self._inbox:
            await self._tick()
        return self._inbox.popleft()


__all__ = ["EV_STATE", "AgentLedClient", "LedRefused", "LedShows", "open_tty", "parse_shows"]
