"""Message bodies: the layouts of ``layouts.MESSAGES`` as construct structs.

A ``Message`` is a type and its named fields; ``to_frame``/``from_frame`` move
between messages and frames. Bodies are little-endian.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import construct as cs

from . import layouts
from .enums import FIELD_ENUMS, MsgType
from .errors import EncodeError, FrameError
from .framing import Frame

FieldValue = int | bytes | str

_FORMATS: dict[str, Any] = {
    "B": cs.Int8ul,
    "b": cs.Int8sl,
    "H": cs.Int16ul,
    "h": cs.Int16sl,
    "I": cs.Int32ul,
    "i": cs.Int32sl,
}


@dataclass(frozen=True)
class Layout:
    name: str
    type_id: int
    fields: tuple[tuple[str, str], ...]
    tail: str | None
    tail_kind: str | None
    fixed: Any  # construct Struct of the fixed fields
    fixed_size: int

    @property
    def field_names(self) -> tuple[str, ...]:
        names = tuple(n for n, _ in self.fields)
        return names + ((self.tail,) if self.tail else ())

    def field_range(self, name: str) -> tuple[int, int]:
        fmt = dict(self.fields)[name]
        bits = 8 * _FORMATS[fmt].sizeof()
        if fmt.islower():
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 1

    @property
    def max_tail(self) -> int:
        return layouts.MAX_BODY - self.fixed_size


def _build_layouts() -> dict[int, Layout]:
    out: dict[int, Layout] = {}
    for name, type_id, fields, tail, tail_kind in layouts.MESSAGES:
        fixed = cs.Struct(*[fname / _FORMATS[fmt] for fname, fmt in fields])
        out[type_id] = Layout(name, type_id, tuple(fields), tail, tail_kind, fixed, fixed.sizeof())
    return out


LAYOUTS: dict[int, Layout] = _build_layouts()
LAYOUTS_BY_NAME: dict[str, Layout] = {lay.name: lay for lay in LAYOUTS.values()}


@dataclass(frozen=True)
class Message:
    """A message type and its fields, e.g. ``Message(MsgType.PING, {"token": 7})``."""

    type: MsgType
    fields: Mapping[str, FieldValue] = field(default_factory=dict)

    @classmethod
    def make(cls, name: str | MsgType, **fields: FieldValue) -> Message:
        msg_type = MsgType[name] if isinstance(name, str) else name
        msg = cls(msg_type, dict(fields))
        encode_body(msg)  # validate now, so a bad message fails where it is made
        return msg

    def __getitem__(self, key: str) -> FieldValue:
        return self.fields[key]

    def to_frame(self, seq: int = 0, ack: int = 0, flags: int = 0) -> Frame:
        return Frame(type=int(self.type), seq=seq, ack=ack, flags=flags, body=encode_body(self))

    @classmethod
    def from_frame(cls, frame: Frame) -> Message:
        return decode_body(frame.type, frame.body)

    def describe(self, max_bytes: int | None = None) -> str:
        """One line, e.g. ``LED_SET mode=SOLID r=255 ...``, for traces and logs; bytes
        fields longer than ``max_bytes`` are cut, with their length given."""
        parts = [self.type.name]
        for key, value in self.fields.items():
            enum_cls = FIELD_ENUMS.get((self.type.name, key))
            if enum_cls is not None and isinstance(value, int):
                try:
                    parts.append(f"{key}={enum_cls(value).name}")
                    continue
                except ValueError:
                    pass
            if isinstance(value, bytes):
                if max_bytes is not None and len(value) > max_bytes:
                    parts.append(f"{key}={value[:max_bytes].hex()}…({len(value)} bytes)")
                else:
                    parts.append(f"{key}={value.hex() or '-'}")
            else:
                parts.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
        return " ".join(parts)


def encode_body(msg: Message) -> bytes:
    lay = LAYOUTS.get(int(msg.type))
    if lay is None:
        raise EncodeError(str(msg.type), "unknown message type")
    extra = set(msg.fields) - set(lay.field_names)
    if extra:
        raise EncodeError(lay.name, f"unknown field(s) {sorted(extra)}")
    values: dict[str, int] = {}
    for fname, _fmt in lay.fields:
        if fname not in msg.fields:
            raise EncodeError(lay.name, f"field {fname!r} missing")
        value = msg.fields[fname]
        lo, hi = lay.field_range(fname)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise EncodeError(lay.name, f"field {fname!r}={value!r} is not an integer in [{lo}, {hi}]")
        values[fname] = int(value)
    body = lay.fixed.build(values)
    if lay.tail:
        tail = msg.fields.get(lay.tail, b"" if lay.tail_kind == "bytes" else "")
        if lay.tail_kind == "str":
            if not isinstance(tail, str):
                raise EncodeError(lay.name, f"field {lay.tail!r} must be text")
            raw = tail.encode("utf-8")
        else:
            if not isinstance(tail, bytes | bytearray | memoryview):
                raise EncodeError(lay.name, f"field {lay.tail!r} must be bytes")
            raw = bytes(tail)
        if len(raw) > lay.max_tail:
            raise EncodeError(lay.name, f"field {lay.tail!r} is {len(raw)} bytes, at most {lay.max_tail}")
        body += raw
    return bytes(body)


def decode_body(type_id: int, body: bytes) -> Message:
    lay = LAYOUTS.get(type_id)
    if lay is None:
        raise FrameError("unknown_type", f"message type 0x{type_id:02x}")
    if len(body) < lay.fixed_size or (not lay.tail and len(body) != lay.fixed_size):
        want = f"at least {lay.fixed_size}" if lay.tail else str(lay.fixed_size)
        raise FrameError("body", f"{lay.name} body is {len(body)} bytes, expected {want}")
    parsed = lay.fixed.parse(body[: lay.fixed_size])
    fields: dict[str, FieldValue] = {name: int(parsed[name]) for name, _ in lay.fields}
    if lay.tail:
        raw = bytes(body[lay.fixed_size :])
        if lay.tail_kind == "str":
            try:
                fields[lay.tail] = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FrameError("body", f"{lay.name}.{lay.tail} is not UTF-8: {exc}") from exc
        else:
            fields[lay.tail] = raw
    return Message(MsgType(type_id), fields)
