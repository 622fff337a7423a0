"""The wire formats shared by every part of Scalerunner (a pure library: no I/O here
except in ``link``, which moves frames over a byte stream).

The framed serial protocol: ``layouts`` (the one source of truth for layouts),
``framing`` (COBS + header + CRC-32), ``messages`` (bodies), ``link`` (reliable
delivery over any byte stream); ``mqtt`` holds the control plane's topics and
payloads. docs/protocol.md is the reference.

Names are loaded on first use, so a part that needs only ``protocol.mqtt`` (the
node agent, whose memory budget is 30 MB) does not pay for construct.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import layouts
    from .enums import DeviceKind, ErrorCode, EventLevel, Flags, LedMode, MsgType, PowerAction, PowerState
    from .errors import (
        DROP_REASONS,
        EncodeError,
        FrameError,
        LinkClosed,
        LinkError,
        PeerTimeout,
        ProtocolError,
    )
    from .framing import Frame, FrameDecoder, decode_frame, encode_frame, pack_frame, unpack_frame
    from .messages import LAYOUTS, LAYOUTS_BY_NAME, Message, decode_body, encode_body

_WHERE = {
    "layouts": "",
    **dict.fromkeys(
        ["DeviceKind", "ErrorCode", "EventLevel", "Flags", "LedMode", "MsgType", "PowerAction", "PowerState"],
        ".enums",
    ),
    **dict.fromkeys(
        [
            "DROP_REASONS",
            "EncodeError",
            "FrameError",
            "LinkClosed",
            "LinkError",
            "PeerTimeout",
            "ProtocolError",
        ],
        ".errors",
    ),
    **dict.fromkeys(
        ["Frame", "FrameDecoder", "decode_frame", "encode_frame", "pack_frame", "unpack_frame"], ".framing"
    ),
    **dict.fromkeys(["LAYOUTS", "LAYOUTS_BY_NAME", "Message", "decode_body", "encode_body"], ".messages"),
}

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
assert sorted(_WHERE) == sorted(__all__)


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if where == "":
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(where, __name__), name)
