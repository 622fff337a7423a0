"""Golden vectors: wire bytes with their decoded meaning, in vectors/frames.json.

The JSON is the reference both codecs are checked against. ``python -m
scalerunner.protocol.golden --write`` regenerates it from ``CASES`` (only when a
layout changes on purpose: the diff then shows every byte that moved).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from . import layouts
from .enums import Flags, MsgType
from .framing import Frame, decode_frame, encode_frame
from .messages import LAYOUTS, FieldValue, Message

VECTORS_DIR = Path(__file__).with_name("vectors")
FRAMES_JSON = VECTORS_DIR / "frames.json"
DROPS_JSON = VECTORS_DIR / "malformed" / "drops.json"

R = int(Flags.ACKREQ)
A = int(Flags.ACK)

# (name, meaning, message, seq, ack, flags)
CASES: list[tuple[str, str, Message, int, int, int]] = [
    ("ack-only", "pure acknowledgement of seq 7", Message(MsgType.ACK, {}), 0, 7, A),
    ("nak", "gap seen after seq 41: resend from 42", Message(MsgType.ACK, {}), 0, 41, A | Flags.NAK),
    ("rst", "receiver not synchronised: resend with SYN", Message(MsgType.ACK, {}), 0, 0, Flags.RST),
    (
        "hello-led",
        "LED indicator boots: fw 1.2.3, 8-byte unique id, first frame of its session",
        Message(
            MsgType.HELLO,
            {
                "kind": 1,
                "proto": 1,
                "fw_major": 1,
                "fw_minor": 2,
                "fw_patch": 3,
                "uid": bytes.fromhex("e66038b7132f4d2a"),
            },
        ),
        200,
        0,
        R | Flags.SYN,
    ),
    ("ping", "host pings with token 0xdeadbeef", Message(MsgType.PING, {"token": 0xDEADBEEF}), 1, 0, R),
    (
        "pong",
        "device answers: same token, up 90 s; acks seq 1",
        Message(MsgType.PONG, {"token": 0xDEADBEEF, "uptime_ms": 90000}),
        201,
        1,
        R | A,
    ),
    (
        "led-set-breathe",
        "breathe cyan at half brightness, 2 s period",
        Message(
            MsgType.LED_SET, {"mode": 3, "r": 0, "g": 255, "b": 255, "brightness": 128, "period_ms": 2000}
        ),
        2,
        0,
        R,
    ),
    (
        "led-gauge",
        "load 73 %, -5.5 °C (signed field), unreliable telemetry",
        Message(MsgType.LED_GAUGE, {"load_pct": 73, "temp_dc": -55}),
        0,
        0,
        0,
    ),
    ("power-cycle", "power-cycle the node", Message(MsgType.POWER, {"action": 2}), 255, 0, R),
    ("status-get", "ask the BMC for its status", Message(MsgType.STATUS_GET, {}), 0, 0, R),
    ("boot-mode-network", "next boot from the network", Message(MsgType.BOOT_MODE, {"mode": 1}), 3, 0, R),
    (
        "event-log-get",
        "send the BMC's logged events from index 12 on",
        Message(MsgType.EVENT_LOG_GET, {"since": 12}),
        4,
        0,
        R,
    ),
    (
        "event-log-entry",
        "logged event 12 of the BMC (13 is next): rail off at 5.2 s",
        Message(
            MsgType.EVENT_LOG,
            {"index": 12, "next": 13, "level": 1, "code": 0x0102, "time_ms": 5200, "text": "power off"},
        ),
        40,
        4,
        R | A,
    ),
    (
        "event-log-end",
        "end of the log reply: index == next, no event",
        Message(
            MsgType.EVENT_LOG, {"index": 13, "next": 13, "level": 0, "code": 0, "time_ms": 0, "text": ""}
        ),
        41,
        4,
        R,
    ),
    (
        "status",
        "on, 5.08 V, 1.2 A, 6.1 W, 48.3 °C",
        Message(
            MsgType.STATUS,
            {"power_state": 1, "rail_mv": 5080, "current_ma": 1200, "power_mw": 6096, "temp_dc": 483},
        ),
        17,
        3,
        A,
    ),
    (
        "console-short",
        "console port 0 carries 'login: '",
        Message(MsgType.CONSOLE_DATA, {"port": 0, "data": b"login: "}),
        9,
        0,
        R,
    ),
    (
        "console-zeros",
        "console bytes that are all 0x00 (COBS must stuff each)",
        Message(MsgType.CONSOLE_DATA, {"port": 1, "data": bytes(8)}),
        10,
        0,
        R,
    ),
    (
        "console-full",
        "largest body: port + 254 bytes counting 0..253 (COBS runs over 254)",
        Message(MsgType.CONSOLE_DATA, {"port": 0, "data": bytes(range(1, 255))}),
        11,
        0,
        R,
    ),
    (
        "event-utf8",
        "warning event with UTF-8 text",
        Message(
            MsgType.EVENT, {"level": 2, "code": 513, "time_ms": 123456, "text": "rail 5V0 low: 4.61 V ⚠"}
        ),
        30,
        0,
        R,
    ),
    (
        "error-unknown",
        "device did not know type 0x55 of host frame seq 4",
        Message(MsgType.ERROR, {"code": 1, "ref_type": 0x55, "ref_seq": 4, "text": "unknown type"}),
        0,
        4,
        A,
    ),
]


def _field_json(value: FieldValue) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def field_from_json(type_id: int, name: str, value: Any) -> FieldValue:
    lay = LAYOUTS[type_id]
    if name == lay.tail and lay.tail_kind == "bytes":
        return bytes.fromhex(value)
    return value  # type: ignore[no-any-return]


def build_vectors() -> list[dict[str, Any]]:
    out = []
    for name, meaning, msg, seq, ack, flags in CASES:
        wire = encode_frame(msg.to_frame(seq=seq, ack=ack, flags=flags))
        out.append(
            {
                "name": name,
                "meaning": meaning,
                "frame_hex": wire.hex(),
                "message": {
                    "type": msg.type.name,
                    "seq": seq,
                    "ack": ack,
                    "flags": flags,
                    "fields": {k: _field_json(v) for k, v in msg.fields.items()},
                },
            }
        )
    return out


def _raw_wire(raw: bytes) -> bytes:
    """COBS-stuff arbitrary unstuffed bytes (to build frames the codec would refuse to make)."""
    from cobs import cobs

    return bytes(cobs.encode(raw)) + b"\x00"


def build_drops() -> list[dict[str, Any]]:
    """Malformed wire input, each with the reason a receiver must count it under."""
    good = encode_frame(Message(MsgType.PING, {"token": 1}).to_frame(seq=5, flags=R))
    good_raw = b"\x01\x02\x05\x00\x01\x04\x01\x00\x00\x00"

    def with_crc(raw: bytes) -> bytes:
        import zlib

        return raw + zlib.crc32(raw).to_bytes(4, "little")

    flipped = bytearray(good)
    flipped[3] ^= 0x10
    cases = [
        ("cobs", "a COBS code byte points past the end", bytes([0x09, 1, 2, 0])),
        ("short", "a valid COBS block but only 3 bytes", _raw_wire(b"\x01\x02\x03")),
        ("oversize", "300 non-zero bytes before the delimiter", b"\x07" * 300 + b"\x00"),
        ("crc", "one bit flipped in a PING frame", bytes(flipped)),
        (
            "length",
            "header says 9 body bytes, frame carries 4",
            _raw_wire(with_crc(b"\x01\x02\x05\x00\x01\x09\x01\x00\x00\x00")),
        ),
        ("version", "protocol version 2", _raw_wire(with_crc(b"\x02" + good_raw[1:]))),
        (
            "flags",
            "reserved flag bit 0x80 set",
            _raw_wire(with_crc(b"\x01\x02\x05\x00\x81\x04\x01\x00\x00\x00")),
        ),
        ("unknown_type", "type 0x55 is not in the table", _raw_wire(with_crc(b"\x01\x55\x05\x00\x01\x00"))),
        (
            "body",
            "PING with a 3-byte body (needs 4)",
            _raw_wire(with_crc(b"\x01\x02\x05\x00\x01\x03\x01\x00\x00")),
        ),
        (
            "body",
            "EVENT text that is not UTF-8",
            _raw_wire(with_crc(b"\x01\x40\x05\x00\x01\x09\x01\x02\x00\x00\x00\x00\x00\xff\xfe")),
        ),
    ]
    return [{"reason": reason, "meaning": meaning, "wire_hex": wire.hex()} for reason, meaning, wire in cases]


def load_vectors() -> list[dict[str, Any]]:
    return json.loads(FRAMES_JSON.read_text())  # type: ignore[no-any-return]


def load_drops() -> list[dict[str, Any]]:
    return json.loads(DROPS_JSON.read_text())  # type: ignore[no-any-return]


def vector_frame(vec: dict[str, Any]) -> tuple[Frame, Message]:
    m = vec["message"]
    type_id = int(MsgType[m["type"]])
    fields = {k: field_from_json(type_id, k, v) for k, v in m["fields"].items()}
    msg = Message(MsgType(type_id), fields)
    return msg.to_frame(seq=m["seq"], ack=m["ack"], flags=m["flags"]), msg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the JSON files")
    args = parser.parse_args()
    frames, drops = build_vectors(), build_drops()
    if args.write:
        DROPS_JSON.parent.mkdir(parents=True, exist_ok=True)
        FRAMES_JSON.write_text(json.dumps(frames, indent=1, ensure_ascii=False) + "\n")
        DROPS_JSON.write_text(json.dumps(drops, indent=1, ensure_ascii=False) + "\n")
    for vec in frames:
        decode_frame(bytes.fromhex(vec["frame_hex"])[:-1])
    print(f"{len(frames)} frame vectors, {len(drops)} drop vectors (protocol v{layouts.PROTOCOL_VERSION})")


if __name__ == "__main__":
    main()
