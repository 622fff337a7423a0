"""The wire formats shared by every part of Scalerunner (a pure library: no I/O here
except in ``link``, which moves frames over a byte stream).

The framed serial protocol: ``layouts`` (the one source of truth for layouts),
``framing`` (COBS + header + CRC-32), ``messages`` (bodies), ``link`` (reliable
delivery over any byte stream). docs/protocol.md is the reference.
"""

from __future__ import annotations

from . import layouts
from .enums import DeviceKind, ErrorCode, EventLevel, Flags, LedMode, MsgType, PowerAction, PowerState
from .errors import DROP_REASONS, EncodeError, FrameError, LinkClosed, LinkError, PeerTimeout, ProtocolError
from .framing import Frame, FrameDecoder, decode_frame, encode_frame, pack_frame, unpack_frame
from .messages import LAYOUTS, LAYOUTS_BY_NAME, Message, decode_body, encode_body

__all__ = [
    "DROP_REASONS",
    "LAYOUTS",
    "LAYOUTS_BY_NAME",
    "DeviceKind",
    "EncodeError",
    "ErrorCode",
    "EventLevel",
    "Flags",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "LedMode",
    "LinkClosed",
    "LinkError",
    "Message",
    "MsgType",
    "PeerTimeout",
    "PowerAction",
    "PowerState",
    "ProtocolError",
    "decode_body",
    "decode_frame",
    "encode_body",
    "encode_frame",
    "layouts",
    "pack_frame",
    "unpack_frame",
]
