"""What both device clients share: opening the link, one request at a time, ERROR and timeouts."""

from __future__ import annotations

import asyncio
import enum
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self, TypeVar

from ...protocol.enums import DeviceKind, ErrorCode, MsgType
from ...protocol.errors import LinkError, PeerTimeout
from ...protocol.layouts import PROTOCOL_VERSION
from ...protocol.link import ByteStream, FdStream, Link, open_serial, open_tcp
from ...protocol.messages import Message
from ..errors import CoordinatorError

DEFAULT_TIMEOUT = 5.0
# The host's HELLO: who it is does not matter to a device, only that it asks for the device's HELLO.
_HOST_HELLO = Message.make(
    "HELLO", kind=int(DeviceKind.HOST), proto=PROTOCOL_VERSION, fw_major=0, fw_minor=0, fw_patch=0, uid=b""
)


def open_port(path: str, baud: int) -> FdStream:
    """A serial port or pty by path, raw 8N1 at ``baud``."""
    return open_serial(path, baud)


async def open_device(port: str, baud: int) -> ByteStream:
    """``port`` as the inventory may give it: a device path (raw 8N1 at ``baud``), or ``socket://HOST:PORT``
    for a serial port served over TCP (ser2net, a QEMU chardev), whose rate is the server's."""
    if "://" not in port:
        return open_port(port, baud)
    scheme, _, rest = port.partition("://")
    host, sep, number = rest.rpartition(":")
    if scheme != "socket" or not sep or not host or not number.isdigit():
        raise LinkError(port, "not a serial port: give a device path or socket://HOST:PORT")
    stream = await open_tcp(host.strip("[]"), int(number))
    stream.name = port
    return stream


E = TypeVar("E", bound=enum.IntEnum)


def enum_value(enum_cls: type[E], value: E | str | int) -> E:
    """``value`` as a member of ``enum_cls``: a member, its number, or its name ("button-long")."""
    try:
        if isinstance(value, str):
            return enum_cls[value.upper().replace("-", "_")]
        return enum_cls(value)
    except (KeyError, ValueError):
        names = ", ".join(m.name.lower() for m in enum_cls)
        raise ValueError(f"{value!r} is not a {enum_cls.__name__} ({names})") from None


class DeviceError(CoordinatorError):
    """The device on ``port`` answered ERROR: ``code`` (an ErrorCode) and its text in ``detail``."""

    def __init__(self, port: str, detail: str, code: ErrorCode | int | None = None) -> None:
        super().__init__(f"{port}: {detail}")
        self.port = port
        self.detail = detail
        self.code = code


@dataclass(frozen=True)
class Hello:
    """The HELLO a device sends when it starts."""

    kind: int
    proto: int
    fw_version: tuple[int, int, int]
    uid: bytes

    @property
    def version(self) -> str:
        return ".".join(str(v) for v in self.fw_version)


def _int(msg: Message, key: str) -> int:
    value = msg.fields[key]
    assert isinstance(value, int)
    return value


def _str(msg: Message, key: str) -> str:
    value = msg.fields[key]
    assert isinstance(value, str)
    return value


class DeviceClient:
    """A link to one device on ``port`` (a serial port path) or an open ``ByteStream``.

    Use as ``async with Client(path) as dev:``. Every request is answered within ``timeout`` seconds or
    raises PeerTimeout naming the port; an ERROR from the device raises DeviceError.
    """

    def __init__(
        self, port: str | ByteStream, *, baud: int = 115200, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._port = port
        self._baud = baud
        self.timeout = timeout
        self.name = port if isinstance(port, str) else port.name
        self._link: Link | None = None
        self._lock = asyncio.Lock()
        self._hello: Hello | None = None
        self._hello_event = asyncio.Event()
        self.unsolicited: deque[Message] = deque(maxlen=256)
        # Answers not meant for the next request may come first: those of a request that timed out, or
        # those an earlier host (a previous process) left unacknowledged on the line, which the device
        # sends again to whoever opens it next. The first request, and the first after a timeout,
        # skip them (_fence). A random token tells this client's PONG from an earlier one's.
        self._stale = True
        self._token = secrets.randbits(32)

    @property
    def link(self) -> Link:
        if self._link is None:
            raise RuntimeError(f"{self.name}: client not open (use `async with`)")
        return self._link

    async def __aenter__(self) -> Self:
        stream = await open_device(self._port, self._baud) if isinstance(self._port, str) else self._port
        self.name = stream.name
        self._link = Link(stream)
        try:
            await self._link.start()
        except BaseException:
            await stream.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._link is not None:
            await self._link.stop()

    def _timed_out(self, what: str) -> PeerTimeout:
        return PeerTimeout(self.name, f"no answer to {what} within {self.timeout:g} s")

    def _note(self, msg: Message) -> None:
        if msg.type == MsgType.HELLO:
            uid = msg.fields["uid"]
            assert isinstance(uid, bytes)
            version = (_int(msg, "fw_major"), _int(msg, "fw_minor"), _int(msg, "fw_patch"))
            self._hello = Hello(_int(msg, "kind"), _int(msg, "proto"), version, uid)
            self._hello_event.set()
        else:
            self.unsolicited.append(msg)

    async def hello(self) -> Hello:
        """The device's HELLO: the one already received, else the next. A device sends it when it starts
        and again when the host sends its own HELLO (``kind`` HOST), which this does once: a device
        that has been up for long still answers."""
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    if self._hello is None:
                        await self.link.send(_HOST_HELLO)
                    while self._hello is None:
                        self._note(await self.link.recv())
            except TimeoutError:
                raise self._timed_out("waiting for HELLO") from None
            return self._hello

    async def _exchange(
        self, sends: list[Message], until: Callable[[Message], bool], *, refs: set[MsgType]
    ) -> Message:
        """Send ``sends`` reliably in order, then return the first message ``until`` accepts. An ERROR
        naming a type in ``refs`` on the way raises DeviceError."""
        what = sends[0].type.name
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    if self._stale:
                        await self._fence()
                    for msg in sends:
                        await self.link.send(msg)
                    while True:
                        msg = await self.link.recv()
                        if msg.type == MsgType.ERROR and _int(msg, "ref_type") in refs:
                            raise self._device_error(msg)
                        if until(msg):
                            return msg
                        self._note(msg)
            except TimeoutError:
                self._stale = True
                raise self._timed_out(what) from None

    async def _fence(self) -> None:
        """Skip what answers an abandoned request: PING, and everything before its PONG. The device
        answers in order, so a late answer to the request that timed out comes before that PONG."""
        self._token = (self._token + 1) & 0xFFFFFFFF
        await self.link.send(Message.make("PING", token=self._token))
        while True:
            msg = await self.link.recv()
            if msg.type == MsgType.PONG and msg.fields.get("token") == self._token:
                self._stale = False
                return
            self._note(msg)

    def _device_error(self, msg: Message) -> DeviceError:
        raw = _int(msg, "code")
        try:
            code: ErrorCode | int = ErrorCode(raw)
            code_name = ErrorCode(raw).name
        except ValueError:
            code, code_name = raw, str(raw)
        try:
            ref = MsgType(_int(msg, "ref_type")).name
        except ValueError:
            ref = str(_int(msg, "ref_type"))
        return DeviceError(self.name, f"{ref} refused: {code_name}: {_str(msg, 'text')}", code)
