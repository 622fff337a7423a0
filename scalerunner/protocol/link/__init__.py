"""Reliable delivery of messages over a byte stream (docs/protocol.md section 2).

``LinkCore`` is the sans-IO core (go-back-N, cumulative ACK, NAK, SYN/RST, RFC 6298 RTO), driven by a
clock passed in; ``Link`` is its asyncio shell over a ``ByteStream`` (pty, tty, pyserial port, TCP),
with ``link.console`` for CONSOLE_DATA byte streams. ``scalerunner.protocol.linksim`` simulates a
serial line to run both against.
"""

from __future__ import annotations

from ._shell import Link
from .console import CONSOLE_CHUNK_MAX, Console
from .core import (
    MAX_WINDOW,
    Acked,
    Delivered,
    Direction,
    Event,
    Failed,
    LinkCore,
    LinkStats,
    PeerReset,
    PeerSession,
    TraceHook,
    Undecodable,
    WindowFull,
)
from .streams import (
    AsyncioStream,
    ByteStream,
    FdStream,
    open_fd_stream,
    open_pty_pair,
    open_serial,
    open_tcp,
)

__all__ = [
    "CONSOLE_CHUNK_MAX",
    "MAX_WINDOW",
    "Acked",
    "AsyncioStream",
    "ByteStream",
    "Console",
    "Delivered",
    "Direction",
    "Event",
    "Failed",
    "FdStream",
    "Link",
    "LinkCore",
    "LinkStats",
    "PeerReset",
    "PeerSession",
    "TraceHook",
    "Undecodable",
    "WindowFull",
    "open_fd_stream",
    "open_pty_pair",
    "open_serial",
    "open_tcp",
]
