"""Frames on the wire: header + body + CRC-32, COBS-encoded, 0x00-delimited.

``encode_frame``/``decode_frame`` are pure functions; ``FrameDecoder`` cuts a byte
stream into frames, telling "incomplete, read more" (it keeps the bytes) apart
from "malformed" (it drops the frame and counts the reason). Nothing it is fed
can make it raise.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cobs import cobs
from construct import Bytes, Int8ul, Int32ul, Struct, this

from . import layouts
from .errors import FrameError

_HEADER = Struct(
    "version" / Int8ul,
    "type" / Int8ul,
    "seq" / Int8ul,
    "ack" / Int8ul,
    "flags" / Int8ul,
    "length" / Int8ul,
)
_FRAME = Struct(
    "header" / _HEADER,
    "body" / Bytes(this.header.length),
    "crc" / Int32ul,
).compile()


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: the header fields and the raw body."""

    type: int
    seq: int = 0
    ack: int = 0
    flags: int = 0
    body: bytes = b""
    version: int = layouts.PROTOCOL_VERSION

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)


def pack_frame(frame: Frame) -> bytes:
    """Header + body + CRC, before COBS (what the CRC covers, plus the CRC)."""
    if len(frame.body) > layouts.MAX_BODY:
        raise FrameError("oversize", f"body of {len(frame.body)} bytes > {layouts.MAX_BODY}")
    for name in ("version", "type", "seq", "ack", "flags"):
        value = getattr(frame, name)
        if not 0 <= value <= 0xFF:
            raise FrameError("length", f"header field {name}={value} does not fit in a byte")
    head = _HEADER.build(
        dict(
            version=frame.version,
            type=frame.type,
            seq=frame.seq,
            ack=frame.ack,
            flags=frame.flags,
            length=len(frame.body),
        )
    )
    data = head + frame.body
    return data + zlib.crc32(data).to_bytes(4, "little")


def encode_frame(frame: Frame) -> bytes:
    """The bytes on the wire for ``frame``, ending with the 0x00 delimiter."""
    return bytes(cobs.encode(pack_frame(frame))) + b"\x00"


def unpack_frame(raw: bytes) -> Frame:
    """Check and parse an unstuffed frame (header + body + CRC); raise FrameError."""
    n = len(raw)
    if n < layouts.HEADER_SIZE + layouts.CRC_SIZE:
        raise FrameError("short", f"{n} bytes, a frame has at least 10")
    if n > layouts.MAX_FRAME:
        raise FrameError("oversize", f"{n} bytes, a frame has at most {layouts.MAX_FRAME}")
    want = int.from_bytes(raw[-4:], "little")
    got = zlib.crc32(raw[:-4])
    if want != got:
        raise FrameError("crc", f"CRC-32 {got:08x} != {want:08x} in frame")
    length = raw[5]
    if length != n - 10:
        raise FrameError("length", f"header says {length} body bytes, frame carries {n - 10}")
    parsed = _FRAME.parse(raw)
    h = parsed.header
    if h.version != layouts.PROTOCOL_VERSION:
        raise FrameError("version", f"protocol version {h.version}, expected {layouts.PROTOCOL_VERSION}")
    if h.flags & ~layouts.FLAGS_KNOWN:
        raise FrameError("flags", f"reserved flag bits set in 0x{h.flags:02x}")
    return Frame(type=h.type, seq=h.seq, ack=h.ack, flags=h.flags, body=bytes(parsed.body), version=h.version)


def decode_frame(encoded: bytes) -> Frame:
    """Decode one COBS-encoded frame without its 0x00 delimiter; raise FrameError."""
    if len(encoded) > layouts.MAX_ENCODED:
        raise FrameError("oversize", f"{len(encoded)} encoded bytes > {layouts.MAX_ENCODED}")
    try:
        raw = bytes(cobs.decode(encoded))
    except cobs.DecodeError as exc:
        raise FrameError("cobs", str(exc)) from exc
    return unpack_frame(raw)


class FrameDecoder:
    """Cuts a byte stream into frames at each 0x00; never raises on bad input.

    Dropped frames are counted in ``drops`` by reason; ``on_drop`` (if given) is
    called with each FrameError, e.g. to log it.
    """

    def __init__(self, on_drop: Callable[[FrameError], None] | None = None) -> None:
        self._buf = bytearray()
        self._overflow = False
        self.drops: Counter[str] = Counter()
        self.frames = 0
        self.on_drop = on_drop

    def _drop(self, err: FrameError) -> None:
        self.drops[err.reason] += 1
        if self.on_drop is not None:
            self.on_drop(err)

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        chunks = bytes(data).split(b"\x00")
        # every chunk but the last was closed by a delimiter
        for i, chunk in enumerate(chunks):
            closed = i < len(chunks) - 1
            if not self._overflow:
                self._buf += chunk
                if len(self._buf) > layouts.MAX_ENCODED:
                    self._overflow = True
                    self._buf.clear()
            if not closed:
                break
            if self._overflow:
                self._overflow = False
                self._drop(FrameError("oversize", f"more than {layouts.MAX_ENCODED} bytes before a 0x00"))
                continue
            if not self._buf:
                continue  # idle 0x00 fill between frames is allowed
            encoded = bytes(self._buf)
            self._buf.clear()
            try:
                out.append(decode_frame(encoded))
            except FrameError as err:
                self._drop(err)
                continue
            self.frames += 1
        return out

    @property
    def pending(self) -> int:
        """Bytes held waiting for their delimiter."""
        return len(self._buf)
