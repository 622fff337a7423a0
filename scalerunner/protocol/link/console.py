"""The console channel: byte streams over CONSOLE_DATA messages (``port`` u8 + data tail)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from ..enums import MsgType
from ..errors import LinkClosed
from ..messages import LAYOUTS, Message

CONSOLE_CHUNK_MAX = LAYOUTS[MsgType.CONSOLE_DATA].max_tail  # 254 bytes of data per message


class _Host(Protocol):
    name: str

    async def _submit(self, msg: Message, reliable: bool) -> asyncio.Future[None] | None: ...


class Console:
    """``link.console``: bytes in both directions, per ``port`` (0 is the node's main UART).

    ``write`` cuts the bytes into messages of at most ``chunk`` bytes and sends them reliably without
    waiting for each acknowledgement (only for window room); ``drain`` waits until all are acknowledged
    (or raises the ``PeerTimeout``/``LinkClosed`` of the first that failed). ``read`` returns what has
    arrived on a port, waiting for at least one byte.
    """

    def __init__(self, host: _Host, *, chunk: int = CONSOLE_CHUNK_MAX) -> None:
        if not 1 <= chunk <= CONSOLE_CHUNK_MAX:
            raise ValueError(f"console chunk {chunk} outside 1..{CONSOLE_CHUNK_MAX}")
        self.chunk = chunk
        self._host = host
        self._unacked: deque[asyncio.Future[None]] = deque()
        self._buffers: dict[int, bytearray] = {}
        self._arrived: dict[int, asyncio.Event] = {}
        self._closed: str | None = None

    async def write(self, data: bytes, port: int = 0) -> None:
        if not 0 <= port <= 0xFF:
            raise ValueError(f"console port {port} outside 0..255")
        view = memoryview(data)
        for off in range(0, len(view), self.chunk):
            piece = bytes(view[off : off + self.chunk])
            fut = await self._host._submit(Message(MsgType.CONSOLE_DATA, {"port": port, "data": piece}), True)
            if fut is not None:
                self._unacked.append(fut)
            while self._unacked and _succeeded(self._unacked[0]):
                self._unacked.popleft()

    async def drain(self) -> None:
        """Wait until every byte written so far is acknowledged by the peer."""
        futs = list(self._unacked)
        self._unacked.clear()
        if not futs:
            return
        await asyncio.wait(futs)
        for fut in futs:
            if not fut.cancelled() and fut.exception() is not None:
                await fut  # raises it

    async def read(self, port: int = 0) -> bytes:
        """The bytes that have arrived on ``port`` (at least one; waits if none). LinkClosed once closed."""
        while True:
            buf = self._buffers.get(port)
            if buf:
                data = bytes(buf)
                buf.clear()
                return data
            if self._closed is not None:
                raise LinkClosed(self._host.name, self._closed)
            event = self._arrived.setdefault(port, asyncio.Event())
            event.clear()
            await event.wait()

    def pending(self, port: int = 0) -> int:
        """Bytes arrived on ``port`` and not yet read."""
        return len(self._buffers.get(port, b""))

    def _feed(self, port: int, data: bytes) -> None:
        self._buffers.setdefault(port, bytearray()).extend(data)
        event = self._arrived.get(port)
        if event is not None:
            event.set()

    def _close(self, detail: str) -> None:
        self._closed = detail
        for event in self._arrived.values():
            event.set()


def _succeeded(fut: asyncio.Future[None]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None
