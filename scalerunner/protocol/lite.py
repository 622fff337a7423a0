"""A light host codec of the framed serial protocol: plain ``struct``, no construct.

The node agent drives its LED indicator with this codec (nodeagent/ledclient.py) because its memory
budget (30 MB) has no room for construct, which costs about 2.5 MB once its structs are built (it also
imports pdb). Everything here is generated from ``layouts`` at import, like the MicroPython codec
(``protocol/mpy/srp.py``); nothing repeats a layout. tests/test_protocol_lite.py proves it byte for byte
identical to the construct codec (``framing`` + ``messages``): hypothesis round trips both ways over every
message type, the golden vectors, and the malformed vectors' drop reasons.

Messages are ``(type_id, fields)`` pairs with plain ints, bytes and str as fields: the agent needs no
more, and a class per message would cost what this module exists to save.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from typing import NamedTuple

from cobs import cobs

from . import layouts
from .errors import EncodeError, FrameError

Fields = dict[str, int | bytes | str]

_HEADER = struct.Struct(layouts.HEADER_FMT)
_CRC = struct.Struct("<I")


class LiteFrame(NamedTuple):
    """One frame: the header fields (length is the body's) and the raw body."""

    type: int
    seq: int
    ack: int
    flags: int
    body: bytes
    version: int = layouts.PROTOCOL_VERSION


class _Layout(NamedTuple):
    name: str
    fixed: struct.Struct  # the fixed fields, little-endian
    names: tuple[str, ...]  # fixed field names, in wire order
    ranges: tuple[tuple[int, int], ...]  # allowed values per fixed field
    tail: str | None
    tail_str: bool

    @property
    def max_tail(self) -> int:
        return layouts.MAX_BODY - self.fixed.size


def _range(fmt: str) -> tuple[int, int]:
    bits = 8 * struct.calcsize(fmt)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if fmt.islower() else (0, (1 << bits) - 1)


LAYOUTS: dict[int, _Layout] = {
    type_id: _Layout(
        name,
        struct.Struct("<" + "".join(f for _, f in fields)),
        tuple(n for n, _ in fields),
        tuple(_range(f) for _, f in fields),
        tail,
        kind == "str",
    )
    for name, type_id, fields, tail, kind in layouts.MESSAGES
}
TYPE_IDS: dict[str, int] = {lay.name: type_id for type_id, lay in LAYOUTS.items()}


# -- bodies -----------------------------------------------------------------------------------------


def encode_body(type_id: int, fields: Fields) -> bytes:
    """The body of message ``type_id``; EncodeError (naming the type and field) if it does not fit."""
    lay = LAYOUTS.get(type_id)
    if lay is None:
        raise EncodeError(f"0x{type_id:02x}", "unknown message type")
    extra = set(fields) - set(lay.names) - ({lay.tail} if lay.tail else set())
    if extra:
        raise EncodeError(lay.name, f"unknown field(s) {sorted(extra)}")
    values: list[int] = []
    for fname, (lo, hi) in zip(lay.names, lay.ranges, strict=True):
        if fname not in fields:
            raise EncodeError(lay.name, f"field {fname!r} missing")
        value = fields[fname]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise EncodeError(lay.name, f"field {fname!r}={value!r} is not an integer in [{lo}, {hi}]")
        values.append(value)
    body = lay.fixed.pack(*values)
    if lay.tail:
        tail = fields.get(lay.tail, "" if lay.tail_str else b"")
        if lay.tail_str != isinstance(tail, str) or not isinstance(tail, str | bytes | bytearray):
            raise EncodeError(lay.name, f"field {lay.tail!r} must be {'text' if lay.tail_str else 'bytes'}")
        raw = tail.encode("utf-8") if isinstance(tail, str) else bytes(tail)
        if len(raw) > lay.max_tail:
            raise EncodeError(lay.name, f"field {lay.tail!r} is {len(raw)} bytes, at most {lay.max_tail}")
        body += raw
    return body


def decode_body(type_id: int, body: bytes) -> Fields:
    """The fields of a body of message ``type_id``; FrameError ``unknown_type`` or ``body``."""
    lay = LAYOUTS.get(type_id)
    if lay is None:
        raise FrameError("unknown_type", f"message type 0x{type_id:02x}")
    size = lay.fixed.size
    if len(body) < size or (not lay.tail and len(body) != size):
        want = f"at least {size}" if lay.tail else str(size)
        raise FrameError("body", f"{lay.name} body is {len(body)} bytes, expected {want}")
    fields: Fields = dict(zip(lay.names, lay.fixed.unpack_from(body), strict=True))
    if lay.tail:
        raw = bytes(body[size:])
        if lay.tail_str:
            try:
                fields[lay.tail] = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FrameError("body", f"{lay.name}.{lay.tail} is not UTF-8: {exc}") from exc
        else:
            fields[lay.tail] = raw
    return fields


# -- frames -----------------------------------------------------------------------------------------


def encode_frame(frame: LiteFrame) -> bytes:
    """The bytes on the wire for ``frame``, ending with the 0x00 delimiter."""
    if len(frame.body) > layouts.MAX_BODY:
        raise FrameError("oversize", f"body of {len(frame.body)} bytes > {layouts.MAX_BODY}")
    head = (frame.version, frame.type, frame.seq, frame.ack, frame.flags)
    for name, value in zip(("version", "type", "seq", "ack", "flags"), head, strict=True):
        if not 0 <= value <= 0xFF:
            raise FrameError("length", f"header field {name}={value} does not fit in a byte")
    data = _HEADER.pack(*head, len(frame.body)) + frame.body
    return bytes(cobs.encode(data + _CRC.pack(zlib.crc32(data)))) + b"\x00"


def decode_frame(encoded: bytes) -> LiteFrame:
    """Decode one COBS-encoded frame without its 0x00; FrameError with the same reasons as ``framing``."""
    if len(encoded) > layouts.MAX_ENCODED:
        raise FrameError("oversize", f"{len(encoded)} encoded bytes > {layouts.MAX_ENCODED}")
    try:
        raw = bytes(cobs.decode(encoded))
    except cobs.DecodeError as exc:
        raise FrameError("cobs", str(exc)) from exc
    n = len(raw)
    if n < layouts.HEADER_SIZE + layouts.CRC_SIZE:
        raise FrameError("short", f"{n} bytes, a frame has at least 10")
    if n > layouts.MAX_FRAME:
        raise FrameError("oversize", f"{n} bytes, a frame has at most {layouts.MAX_FRAME}")
    (want,) = _CRC.unpack_from(raw, n - 4)
    got = zlib.crc32(raw[:-4])
    if want != got:
        raise FrameError("crc", f"CRC-32 {got:08x} != {want:08x} in frame")
    version, type_id, seq, ack, flags, length = _HEADER.unpack_from(raw)
    if length != n - 10:
        raise FrameError("length", f"header says {length} body bytes, frame carries {n - 10}")
    if version != layouts.PROTOCOL_VERSION:
        raise FrameError("version", f"protocol version {version}, expected {layouts.PROTOCOL_VERSION}")
    if flags & ~layouts.FLAGS_KNOWN:
        raise FrameError("flags", f"reserved flag bits set in 0x{flags:02x}")
    return LiteFrame(type_id, seq, ack, flags, raw[6:-4], version)


class LiteDecoder:
    """Cuts a byte stream into frames at each 0x00; never raises. Drops are counted by reason."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = False
        self.drops: Counter[str] = Counter()

    def feed(self, data: bytes) -> list[LiteFrame]:
        out: list[LiteFrame] = []
        chunks = bytes(data).split(b"\x00")
        for i, chunk in enumerate(chunks):
            if not self._overflow:
                self._buf += chunk
                if len(self._buf) > layouts.MAX_ENCODED:
                    self._overflow = True
                    self._buf.clear()
            if i == len(chunks) - 1:
                break  # not closed by a delimiter yet
            if self._overflow:
                self._overflow = False
                self.drops["oversize"] += 1
                continue
            if not self._buf:
                continue  # idle 0x00 between frames
            encoded = bytes(self._buf)
            self._buf.clear()
            try:
                out.append(decode_frame(encoded))
            except FrameError as err:
                self.drops[err.reason] += 1
        return out


__all__ = [
    "LAYOUTS",
    "TYPE_IDS",
    "Fields",
    "LiteDecoder",
    "LiteFrame",
    "decode_body",
    "decode_frame",
    "encode_body",
    "encode_frame",
]
