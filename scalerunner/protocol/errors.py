"""Exceptions of the protocol layer: few, with structured fields."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error raised by scalerunner.protocol."""


class FrameError(ProtocolError):
    """A frame or body that cannot be decoded.

    ``reason`` is one of a small fixed set (see ``DROP_REASONS``) so receivers can
    count drops per reason; ``detail`` says what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EncodeError(ProtocolError, ValueError):
    """A message that cannot be encoded (unknown type, field missing or out of range)."""

    def __init__(self, message_type: str, detail: str) -> None:
        super().__init__(f"cannot encode {message_type}: {detail}")
        self.message_type = message_type
        self.detail = detail


class LinkError(ProtocolError):
    """The link to a peer failed; ``port`` names the serial port, pty or socket."""

    def __init__(self, port: str, detail: str) -> None:
        super().__init__(f"{port}: {detail}")
        self.port = port
        self.detail = detail


class PeerTimeout(LinkError):
    """The peer stopped acknowledging: it vanished, or the line is down."""


class LinkClosed(LinkError):
    """The link was stopped, or its byte stream reached end of file."""


# Why a received frame was dropped; every receiver counts drops under these names.
DROP_REASONS = (
    "cobs",  # COBS structure invalid (a code byte points past the frame end)
    "short",  # fewer bytes than a header and a CRC
    "oversize",  # more bytes before a 0x00 than the largest frame
    "crc",  # CRC-32 mismatch
    "length",  # header length field disagrees with the body received
    "version",  # unsupported protocol version
    "flags",  # reserved flag bits set
    "unknown_type",  # message type not in layouts.MESSAGES
    "body",  # body does not match the type's layout (size, UTF-8)
)
