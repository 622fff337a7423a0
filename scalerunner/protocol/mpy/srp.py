# srp: the framed serial protocol codec for MicroPython (docs/protocol.md section 1).
#
# wire = COBS(header(6) | body | crc32(4)) | 0x00. Message layouts come from
# layouts.py (deployed next to this file); nothing here repeats them.
# Buffers are allocated once per Encoder/Decoder and reused: the hot path packs
# into them with struct.pack_into and moves bytes with memoryview slices.

import struct
from binascii import crc32

from micropython import const

import layouts

# const() needs literals; these are layouts' values, checked once below.
_HDR = const(6)
_CRC = const(4)
_MIN_FRAME = const(10)
_MAX_BODY = const(255)
_MAX_FRAME = const(265)
_MAX_ENC = const(267)
_VERSION = const(1)
_FLAGS_KNOWN = const(0x1F)
# crc32 over data followed by its own little-endian CRC-32 is always this value,
# so a frame is checked with one C call and no unpacking.
_CRC_RESIDUE = const(0x2144DF1C)

ACKREQ = const(0x01)
ACK = const(0x02)
SYN = const(0x04)
NAK = const(0x08)
RST = const(0x10)

# ErrorCode values that unpack() returns for a body it cannot decode.
ERR_UNKNOWN_TYPE = const(1)
ERR_BAD_BODY = const(2)

if (_HDR, _CRC, _MAX_BODY, _MAX_FRAME, _MAX_ENC, _VERSION, _FLAGS_KNOWN, ACKREQ, ACK, SYN, NAK, RST) != (
    layouts.HEADER_SIZE, layouts.CRC_SIZE, layouts.MAX_BODY, layouts.MAX_FRAME, layouts.MAX_ENCODED,
    layouts.PROTOCOL_VERSION, layouts.FLAGS_KNOWN, layouts.FLAG_ACKREQ, layouts.FLAG_ACK,
    layouts.FLAG_SYN, layouts.FLAG_NAK, layouts.FLAG_RST,
):
    raise ImportError("srp: constants disagree with layouts.py")

_HDR_FMT = layouts.HEADER_FMT

# Drop reasons, the same names as the CPython side (errors.DROP_REASONS).
REASONS = ("cobs", "short", "oversize", "crc", "length", "version", "flags", "unknown_type", "body")

_TAIL_NONE = const(0)
_TAIL_BYTES = const(1)
_TAIL_STR = const(2)


def _build_table():
    # type id -> (name, fixed fmt, fixed size, tail kind, ((fmt, offset), ...) per fixed field)
    table = {}
    names = {}
    for name, type_id, fields, tail, kind in layouts.MESSAGES:
        fmt = "<" + "".join(f for _, f in fields)
        per, off = [], 0
        for _, f in fields:
            per.append(("<" + f, off))
            off += struct.calcsize(f)
        tk = _TAIL_NONE if tail is None else (_TAIL_STR if kind == "str" else _TAIL_BYTES)
        table[type_id] = (name, fmt, off, tk, tuple(per))
        names[name] = type_id
    return table, names


TABLE, TYPE_IDS = _build_table()


def field_names(type_id):
    """Field names of a type in wire order, tail last (for tests and tools)."""
    for name, t, fields, tail, _ in layouts.MESSAGES:
        if t == type_id:
            return tuple(n for n, _ in fields) + ((tail,) if tail else ())
    return None


def pack_body(type_id, fields, buf, off):
    """Pack `fields` (fixed values in layout order, tail last) into buf[off:]; return the body length.

    Bad arguments are programming errors on this side, so they raise ValueError.
    """
    lay = TABLE.get(type_id)
    if lay is None:
        raise ValueError("srp: unknown type")
    _, fmt, size, tk, per = lay
    if tk == _TAIL_NONE:
        if size:
            struct.pack_into(fmt, buf, off, *fields)
        return size
    # A tail follows: pack fixed fields one by one, so no tuple slice is allocated.
    for i in range(len(per)):
        f, o = per[i]
        struct.pack_into(f, buf, off + o, fields[i])
    tail = fields[len(per)] if len(fields) > len(per) else b""
    if tk == _TAIL_STR and isinstance(tail, str):
        tail = tail.encode()
    n = len(tail)
    if size + n > _MAX_BODY:
        raise ValueError("srp: tail too long")
    buf[off + size : off + size + n] = tail
    return size + n


def _utf8_strict(b):
    # MicroPython's str() accepts overlong forms, surrogates and code points above
    # U+10FFFF; CPython does not. Its structural check already passed, so only the
    # lead byte and the byte after it need a look.
    i, n = 0, len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        d = b[i + 1]
        if (c == 0xE0 and d < 0xA0) or (c == 0xED and d > 0x9F):
            return False
        if (c == 0xF0 and d < 0x90) or (c == 0xF4 and d > 0x8F):
            return False
        i += 2 if c < 0xE0 else (3 if c < 0xF0 else 4)
    return True


def unpack(type_id, body):
    """Fields tuple of a body (tail last: bytes, or str for text), or ERR_UNKNOWN_TYPE / ERR_BAD_BODY."""
    lay = TABLE.get(type_id)
    if lay is None:
        return ERR_UNKNOWN_TYPE
    _, fmt, size, tk, _ = lay
    n = len(body)
    if n < size or (tk == _TAIL_NONE and n != size):
        return ERR_BAD_BODY
    fixed = struct.unpack_from(fmt, body, 0)
    if tk == _TAIL_NONE:
        return fixed
    if tk == _TAIL_BYTES:
        return fixed + (bytes(body[size:]),)
    try:
        text = str(body[size:], "utf-8")
    except UnicodeError:
        return ERR_BAD_BODY
    if len(text) != n - size and not _utf8_strict(body[size:]):
        return ERR_BAD_BODY  # (len(text) == byte count means pure ASCII: nothing to check)
    return fixed + (text,)


def cobs_stuff(buf, mv, end):
    """COBS-encode in place the frame at buf[1:end] (buf[0] is free); return the encoded length.

    Each zero becomes the distance to the next one, so nothing moves unless a run
    of 254 non-zero bytes needs an extra code byte (at most twice per frame).
    Same output as the `cobs` package: a 254-byte run at the very end gets no
    empty block after it. mv is memoryview(buf); buf must have room for end + 2.
    """
    code = 0  # where the current code byte goes
    while True:
        z = buf.find(b"\x00", code + 1, end)  # found in C, not byte by byte
        if z < 0:
            z = end
        run = z - code - 1
        if run > 254 or (run == 254 and z < end):
            p = code + 255  # a full block: make room for the next code byte
            mv[p + 1 : end + 1] = mv[p:end]
            end += 1
            buf[code] = 0xFF
            code = p
            continue
        buf[code] = run + 1  # (0xFF for a 254-byte run that ends the frame)
        if z == end:
            return end
        code = z


def cobs_unstuff(buf, mv, end):
    """COBS-decode in place buf[:end] (no zero inside): the frame is left at buf[1:1 + n]; return n.

    Code bytes become the zeros they stand for; only a full 0xFF block (which
    stands for no zero) makes the rest move. -1 if a code points past the end.
    """
    pos = 0  # where the current block's code byte is (or would be, after a move)
    c = buf[0]
    while True:
        nxt = pos + c
        if nxt > end:
            return -1
        if nxt == end:
            return end - 1
        c2 = buf[nxt]
        if c == 0xFF:  # no zero here: take the code byte out
            mv[nxt : end - 1] = mv[nxt + 1 : end]
            end -= 1
            pos = nxt - 1
        else:
            buf[nxt] = 0
            pos = nxt
        c = c2


class Encoder:
    """Builds wire frames in a buffer of its own; each result is valid until the next call.

    The frame is packed at out[1:] and COBS-stuffed where it lies. The result is
    a memoryview of `out`, a bytearray (which, unlike the view, a Decoder can be
    fed directly: `dec.feed(enc.out, len(wire))`).
    """

    def __init__(self):
        self.out = bytearray(_MAX_ENC + 1)
        self._mv = memoryview(self.out)

    def encode(self, type_id, seq, ack, flags, fields):
        """Wire bytes (memoryview, delimiter included) of a message given as a fields tuple."""
        n = pack_body(type_id, fields, self.out, 1 + _HDR)
        return self._frame(type_id, seq, ack, flags, n)

    def encode_body(self, type_id, seq, ack, flags, body):
        """Wire bytes of an already packed body (e.g. one kept in a send window)."""
        n = len(body)
        self.out[1 + _HDR : 1 + _HDR + n] = body
        return self._frame(type_id, seq, ack, flags, n)

    def _frame(self, type_id, seq, ack, flags, n):
        out = self.out
        struct.pack_into(_HDR_FMT, out, 1, _VERSION, type_id, seq, ack, flags, n)
        n += 1 + _HDR
        struct.pack_into("<I", out, n, crc32(self._mv[1:n]))
        m = cobs_stuff(out, self._mv, n + _CRC)
        out[m] = 0
        return self._mv[: m + 1]


class Decoder:
    """Cuts a byte stream into frames at each 0x00; never raises on bad input.

    For each good frame it calls on_frame(type_id, seq, ack, flags, body) where
    body is a memoryview valid only during the call (decode it with unpack()).
    Bad frames are counted in `drops` by reason; `last_drop` names the latest.
    """

    def __init__(self, on_frame):
        self.on_frame = on_frame
        self._rx = bytearray(_MAX_ENC)
        self._rxmv = memoryview(self._rx)
        self._n = 0
        self._over = False  # discarding up to the next 0x00
        self._src = None  # the last buffer fed, and a view of it
        self._srcmv = self._rxmv
        self.drops = {r: 0 for r in REASONS}
        self.last_drop = None
        self.frames = 0

    def drop(self, reason):
        self.drops[reason] += 1
        self.last_drop = reason

    def feed(self, data, n=-1):
        """Feed data[:n] (bytes or bytearray; all of it if n < 0)."""
        if n < 0:
            n = len(data)
        if data is not self._src:  # a link feeds the same buffer each time: view it once
            self._src, self._srcmv = data, memoryview(data)
        mv = self._srcmv
        i = 0
        while i < n:
            z = data.find(b"\x00", i, n)
            end = n if z < 0 else z
            if not self._over:
                k = end - i
                if self._n + k > _MAX_ENC:
                    self._over = True  # too long for a frame: skip to the next 0x00
                    self._n = 0
                elif k:
                    self._rx[self._n : self._n + k] = mv[i:end]
                    self._n += k
            if z < 0:
                return
            i = z + 1
            if self._over:
                self._over = False
                self.drop("oversize")
            elif self._n:  # (consecutive 0x00 are idle fill)
                k = self._n
                self._n = 0
                self._frame(k)

    @property
    def pending(self):
        return self._n

    def _frame(self, k):
        # Checks in the same order as the CPython codec so both count the same reason.
        # After unstuffing, the frame is at rx[1:1 + n]: the header starts at 1.
        rx = self._rx
        n = cobs_unstuff(rx, self._rxmv, k)
        if n < 0:
            return self.drop("cobs")
        if n < _MIN_FRAME:
            return self.drop("short")
        if n > _MAX_FRAME:
            return self.drop("oversize")
        if crc32(self._rxmv[1 : 1 + n]) != _CRC_RESIDUE:
            return self.drop("crc")
        if rx[6] != n - _MIN_FRAME:
            return self.drop("length")
        if rx[1] != _VERSION:
            return self.drop("version")
        if rx[5] & ~_FLAGS_KNOWN:
            return self.drop("flags")
        self.frames += 1
        self.on_frame(rx[2], rx[3], rx[4], rx[5], self._rxmv[1 + _HDR : 1 + n - _CRC])
