"""Codec throughput: frames encoded and decoded per second, CPython and MicroPython (unix port).

Each round trip is: build the wire bytes of a message, feed them to a stream decoder, decode the body.
The mix is what a busy link carries (acks, pings, gauges, status, events) plus full 254-byte
CONSOLE_DATA frames. The reference is the frame rate that fills a 3 Mbaud 8N1 line with full frames:
300 000 bytes/s / 268 bytes per wire frame. The MicroPython figure is the unix port on this x86 machine,
not an RP2040; its ratio to CPython, measured side by side, is the figure that carries over.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import Figure
from scalerunner.firmware import find_tool
from scalerunner.protocol import LAYOUTS, FrameDecoder, Message, decode_body, encode_frame, layouts

REPO = Path(__file__).resolve().parents[1]
LINE_BYTES_PER_S = 3_000_000 // 10  # 8N1: ten bit times per byte
FULL_WIRE_FRAME = layouts.MAX_ENCODED + 1  # 268 bytes with the delimiter
LINE_FRAMES_PER_S = LINE_BYTES_PER_S / FULL_WIRE_FRAME
SECONDS = 1.0  # per measurement

Case = tuple[Message, int, int, int]  # message, seq, ack, flags


def mix() -> list[Case]:
    full = bytes((i * 7 + 1) & 0xFF or 1 for i in range(254))
    return [
        (Message.make("ACK"), 0, 17, 0x02),
        (Message.make("PING", token=0xDEADBEEF), 3, 0, 0x01),
        (Message.make("PONG", token=0xDEADBEEF, uptime_ms=90_000), 4, 3, 0x03),
        (Message.make("LED_GAUGE", load_pct=73, temp_dc=-55), 0, 0, 0),
        (
            Message.make("STATUS", power_state=1, rail_mv=5080, current_ma=1200, power_mw=6096, temp_dc=483),
            0,
            9,
            0x02,
        ),
        (Message.make("EVENT", level=2, code=513, time_ms=123456, text="rail 5V0 low: 4.61 V"), 5, 0, 0x01),
        (Message.make("CONSOLE_DATA", port=0, data=full), 6, 0, 0x01),
        (Message.make("CONSOLE_DATA", port=0, data=full), 7, 0, 0x01),
    ]


def console_only() -> list[Case]:
    return [(Message.make("CONSOLE_DATA", port=0, data=bytes(range(1, 255))), 9, 2, 0x03)]


def cpython_rate(cases: list[Case]) -> float:
    dec = FrameDecoder()
    n = 0
    start = time.perf_counter()
    deadline = start + SECONDS
    while time.perf_counter() < deadline:
        for msg, seq, ack, flags in cases:
            for frame in dec.feed(encode_frame(msg.to_frame(seq=seq, ack=ack, flags=flags))):
                decode_body(frame.type, frame.body)
                n += 1
    assert not dec.drops
    return n / (time.perf_counter() - start)


# Runs under MicroPython: the same round trip with srp's Encoder, Decoder and unpack.
MPY_BENCH = """
import sys, json, time, binascii
sys.path.append(sys.argv[1] + "/scalerunner/protocol")
sys.path.append(sys.argv[1] + "/scalerunner/protocol/mpy")
import srp

def run(cases, ms):
    enc = srp.Encoder()
    count = [0]
    def on_frame(t, seq, ack, flags, body):
        srp.unpack(t, body)
        count[0] += 1
    dec = srp.Decoder(on_frame)
    start = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), start) < ms:
        for t, seq, ack, flags, fields in cases:
            dec.feed(enc.out, len(enc.encode(t, seq, ack, flags, fields)))
    took = time.ticks_diff(time.ticks_ms(), start)
    assert sum(dec.drops.values()) == 0
    return count[0] * 1000 / took

out = {}
for name, spec in json.loads(sys.stdin.read()).items():
    cases = []
    for t, seq, ack, flags, fields, tail in spec["cases"]:
        if tail == "bytes":
            fields[-1] = binascii.unhexlify(fields[-1])
        cases.append((t, seq, ack, flags, tuple(fields)))
    out[name] = run(cases, spec["ms"])
print(json.dumps(out))
"""


def _mpy_case(msg: Message, seq: int, ack: int, flags: int) -> list[object]:
    """A case as the MicroPython script reads it: fields in layout order, a bytes tail as hex."""
    values = [v.hex() if isinstance(v, bytes) else v for v in msg.fields.values()]
    return [int(msg.type), seq, ack, flags, values, LAYOUTS[int(msg.type)].tail_kind]


def micropython_rates(sets: dict[str, list[Case]]) -> dict[str, float]:
    mpy = find_tool("micropython")
    if mpy is None:
        raise RuntimeError("micropython is not installed (make setup)")
    spec = {
        name: {"cases": [_mpy_case(*c) for c in cases], "ms": int(SECONDS * 1000)}
        for name, cases in sets.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench_srp.py"
        script.write_text(MPY_BENCH)
        proc = subprocess.run(
            [mpy, str(script), str(REPO)], input=json.dumps(spec), capture_output=True, text=True, timeout=60
        )
    if proc.returncode != 0:
        raise RuntimeError(f"MicroPython benchmark failed: {proc.stdout}{proc.stderr}")
    rates: dict[str, float] = json.loads(proc.stdout)
    return rates


def run() -> list[Figure]:
    sets = {"mix": mix(), "full console frames": console_only()}
    mpy = micropython_rates(sets)
    line = f"3 Mbaud full frames {LINE_FRAMES_PER_S:,.0f} frames/s"
    figures: list[Figure] = []
    for name, cases in sets.items():
        cpy = cpython_rate(cases)
        figures += [
            Figure(f"codec CPython, {name}", f"{cpy:,.0f} frames/s", line, cpy / LINE_FRAMES_PER_S),
            Figure(
                f"codec MicroPython unix, {name}",
                f"{mpy[name]:,.0f} frames/s",
                line,
                mpy[name] / LINE_FRAMES_PER_S,
            ),
            Figure(
                f"codec MicroPython vs CPython, {name}",
                f"{mpy[name]:,.0f} frames/s",
                f"CPython {cpy:,.0f} frames/s",
                mpy[name] / cpy,
            ),
        ]
    return figures


if __name__ == "__main__":
    for f in run():
        print(f"{f.name}: {f.measured} vs {f.against}: {f.ratio:.3f}")
