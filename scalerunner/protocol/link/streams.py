"""Byte streams a ``Link`` runs over: a pty or tty file descriptor, a pyserial port, a TCP socket.

Each adapter is a ``ByteStream``: ``read()`` returns whatever is available (at least one byte, b"" at end
of file), ``write()`` writes everything, ``close()`` releases the port. ``name`` (the port, pty or socket
address) is in every error. Opening failures raise ``LinkError``; I/O errors later surface as ``OSError``,
which ``Link`` turns into ``LinkClosed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import termios
import tty
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import serial

from ..errors import LinkError

_READ_SIZE = 65536


@runtime_checkable
class ByteStream(Protocol):
    name: str

    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class FdStream:
    """A non-blocking file descriptor (a pty side or a tty device) driven by the event loop.

    A tty is put in raw mode (unless ``raw`` is false). EIO from a pty whose other side has closed reads
    as end of file.
    ``on_close`` replaces closing the descriptor (e.g. a pyserial port closes its own).
    """

    def __init__(
        self, fd: int, name: str, *, raw: bool = True, on_close: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self._fd = fd
        self._on_close = on_close
        self._closed = False
        self._waiters: set[asyncio.Future[None]] = set()
        try:
            if raw and os.isatty(fd):
                tty.setraw(fd)
            os.set_blocking(fd, False)
        except (OSError, termios.error) as exc:
            raise LinkError(name, f"cannot set up descriptor {fd}: {exc}") from exc

    @classmethod
    def open(cls, path: str) -> FdStream:
        """Open a device or pty by path, read-write, without making it our controlling terminal."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise LinkError(path, f"cannot open: {exc.strerror or exc}") from exc
        try:
            return cls(fd, path)
        except LinkError:
            os.close(fd)
            raise

    @property
    def fileno(self) -> int:
        return self._fd

    async def _ready(self, add: Callable[..., None], remove: Callable[[int], bool]) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not fut.done():
                fut.set_result(None)

        add(self._fd, done)
        self._waiters.add(fut)
        try:
            await fut
        finally:
            self._waiters.discard(fut)
            if not self._closed:
                remove(self._fd)

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                return b""
            try:
                return os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno == errno.EIO:  # pty: the other side is closed
                    return b""
                raise
            await self._ready(loop.add_reader, loop.remove_reader)

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            if self._closed:
                raise BrokenPipeError(errno.EPIPE, f"{self.name}: write after close")
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                await self._ready(loop.add_writer, loop.remove_writer)
                continue
            view = view[n:]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._fd)
        loop.remove_writer(self._fd)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        if self._on_close is not None:
            self._on_close()
        else:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def open_fd_stream(fd: int, *, name: str) -> FdStream:
    """A stream over a descriptor already open (e.g. a pty master); it is closed with the stream."""
    return FdStream(fd, name)


def open_serial(path: str, baud: int = 115200) -> FdStream:
    """A serial port by path (``/dev/ttyACM0``) at ``baud`` 8N1, configured by pyserial (POSIX)."""
    if os.name != "posix":
        raise LinkError(path, "serial ports are supported on POSIX systems only")
    try:
        port = serial.Serial(path, baudrate=baud, timeout=0, write_timeout=None, exclusive=True)
    except (serial.SerialException, ValueError) as exc:
        raise LinkError(path, f"cannot open serial port at {baud} baud: {exc}") from exc
    try:
        # pyserial's timeout=0 means VMIN=0/VTIME=0, under which a read of an idle line returns b""
        # (taken for end of file); VMIN=1 makes it EAGAIN on the non-blocking fd, as it should be.
        attrs = termios.tcgetattr(port.fileno())
        attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
        termios.tcsetattr(port.fileno(), termios.TCSANOW, attrs)
        return FdStream(port.fileno(), path, raw=False, on_close=port.close)
    except termios.error as exc:
        port.close()
        raise LinkError(path, f"cannot configure the serial port: {exc}") from exc
    except LinkError:
        port.close()
        raise


class AsyncioStream:
    """An asyncio StreamReader/StreamWriter pair (a TCP socket, e.g. a ser2net port or a QEMU chardev)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        return await self._reader.read(_READ_SIZE)

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        if self._writer.is_closing():
            return
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()


async def open_tcp(host: str, port: int) -> AsyncioStream:
    """Connect to ``host:port``; the stream's name is that address."""
    name = f"{host}:{port}"
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise LinkError(name, f"cannot connect: {exc.strerror or exc}") from exc
    return AsyncioStream(reader, writer, name)


def open_pty_pair(name: str = "pty") -> tuple[FdStream, FdStream]:
    """Both sides of a new pseudo-terminal, raw: (master, slave). Names are ``name`` and the slave's path."""
    try:
        master, slave = os.openpty()
    except OSError as exc:
        raise LinkError(name, f"cannot open a pty: {exc}") from exc
    path = os.ttyname(slave)
    return FdStream(master, f"{name}:{path}"), FdStream(slave, path)
