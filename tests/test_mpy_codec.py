"""The MicroPython codec (scalerunner/protocol/mpy/srp.py) against the CPython one, byte for byte.

One MicroPython process (tests/mpy/codec_driver.py) serves the whole module; each
example is one line of JSON each way.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cobs import cobs
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.protocol import (
    LAYOUTS,
    LAYOUTS_BY_NAME,
    Frame,
    FrameDecoder,
    FrameError,
    Message,
    MsgType,
    decode_body,
    encode_frame,
    layouts,
)
from tests.mpy_support import micropython_binary
from tests.strategies import message_of

pytestmark = [pytest.mark.micropython, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "mpy" / "codec_driver.py"
VECTORS = REPO / "scalerunner" / "protocol" / "vectors"
ANSWER_TIMEOUT = 10.0


class MpyCodec:
    """The driver process: ask() sends one command line and returns its JSON answer."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [micropython_binary(), str(DRIVER), str(REPO)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buf = b""

    def _readline(self) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], ANSWER_TIMEOUT)
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                self.proc.kill()
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"micropython driver gave no answer: {err}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def ask(self, cmd: str, arg: str = "") -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd} {arg}\n".encode())
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._readline())
        assert "error" not in answer, answer["error"]
        return answer

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.write(b"Q\n")
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture(scope="module")
def mpy() -> Iterator[MpyCodec]:
    codec = MpyCodec()
    try:
        yield codec
    finally:
        codec.close()


# --- the JSON shape shared with the driver: tails as hex (text as its UTF-8) -------------------


def fields_json(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in msg.fields.items():
        if isinstance(value, str):
            value = value.encode()
        out[name] = value.hex() if isinstance(value, bytes) else value
    return out


def full_fields(msg: Message) -> Message:
    """The message with its tail present, as a decoder returns it."""
    lay = LAYOUTS[int(msg.type)]
    if lay.tail and lay.tail not in msg.fields:
        return Message(msg.type, {**msg.fields, lay.tail: b"" if lay.tail_kind == "bytes" else ""})
    return msg


def event(type_id: int, seq: int, ack: int, flags: int, fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_id, "seq": seq, "ack": ack, "flags": flags, "fields": fields}


def cpython_events(frames: list[Frame]) -> list[dict[str, Any]]:
    """What the driver reports per frame that passed the CRC, computed by the CPython codec."""
    out: list[dict[str, Any]] = []
    for frame in frames:
        try:
            msg = decode_body(frame.type, frame.body)
        except FrameError as err:
            out.append({"drop": err.reason})
            continue
        out.append(event(frame.type, frame.seq, frame.ack, frame.flags, fields_json(msg)))
    return out


def cpython_decode(wire: bytes) -> dict[str, Any]:
    dec = FrameDecoder()
    frames = dec.feed(wire)
    return {"events": cpython_events(frames), "drops": dict(dec.drops), "pending": dec.pending}


def mpy_decode(mpy: MpyCodec, wire: bytes) -> dict[str, Any]:
    answer = mpy.ask("D", wire.hex())
    body_drops = Counter(e["drop"] for e in answer["events"] if "drop" in e)
    link_drops = Counter(answer["drops"]) - body_drops  # the driver counts both kinds in "drops"
    return {"events": answer["events"], "drops": dict(+link_drops), "pending": answer["pending"]}


def mpy_encode(mpy: MpyCodec, msg: Message, seq: int, ack: int, flags: int) -> bytes:
    cmd = {"type": int(msg.type), "seq": seq, "ack": ack, "flags": flags, "fields": fields_json(msg)}
    return bytes.fromhex(mpy.ask("E", json.dumps(cmd))["wire"])


# --- strategies ---------------------------------------------------------------------------------

u8 = st.integers(0, 255)
known_flags = st.integers(0, layouts.FLAGS_KNOWN)
type_ids = sorted(LAYOUTS)


def headers() -> st.SearchStrategy[tuple[int, int, int]]:
    return st.tuples(u8, u8, known_flags)


@st.composite
def raw_frames(draw: st.DrawFn) -> bytes:
    """Unstuffed frames with a correct CRC but anything in header and body: reach every late reason."""
    version = draw(st.sampled_from([1, 1, 1, 0, 2, 255]))
    type_id = draw(st.one_of(st.sampled_from(type_ids), u8))
    flags = draw(st.one_of(known_flags, u8))
    body = draw(st.one_of(st.binary(max_size=12), st.binary(max_size=layouts.MAX_BODY)))
    length = draw(st.one_of(st.just(len(body)), u8))
    raw = bytes([version, type_id, draw(u8), draw(u8), flags, length]) + body
    return raw + zlib.crc32(raw).to_bytes(4, "little")


@st.composite
def corrupted_wire(draw: st.DrawFn) -> bytes:
    """A valid frame (or a CRC-correct odd one) with the kind of damage a line does to it."""
    if draw(st.booleans()):
        msg = draw(st.sampled_from(type_ids).flatmap(message_of))
        seq, ack, flags = draw(headers())
        wire = bytearray(encode_frame(msg.to_frame(seq=seq, ack=ack, flags=flags)))
    else:
        wire = bytearray(cobs.encode(draw(raw_frames())) + b"\x00")
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "zero"]))
        pos = draw(st.integers(0, max(len(wire) - 1, 0)))
        if kind == "flip" and wire:
            wire[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            wire.insert(pos, draw(u8))
        elif kind == "delete" and len(wire) > 1:
            del wire[pos]
        elif kind == "truncate":
            del wire[pos:]
        elif kind == "zero" and wire:
            wire[pos] = 0
    if not wire.endswith(b"\x00"):
        wire.append(0)
    return bytes(wire)


# --- CPython encodes, MicroPython decodes -------------------------------------------------------


@pytest.mark.parametrize("type_id", type_ids, ids=[LAYOUTS[t].name for t in type_ids])
@given(data=st.data())
def test_micropython_decodes_what_cpython_encodes(mpy: MpyCodec, type_id: int, data: st.DataObject) -> None:
    msg = full_fields(data.draw(message_of(type_id)))
    seq, ack, flags = data.draw(headers())
    wire = encode_frame(msg.to_frame(seq=seq, ack=ack, flags=flags))
    got = mpy_decode(mpy, wire)
    assert got["events"] == [event(type_id, seq, ack, flags, fields_json(msg))]
    assert got["drops"] == {} and got["pending"] == 0


# --- MicroPython encodes, CPython decodes -------------------------------------------------------


@pytest.mark.parametrize("type_id", type_ids, ids=[LAYOUTS[t].name for t in type_ids])
@given(data=st.data())
def test_micropython_encodes_the_same_bytes_as_cpython(
    mpy: MpyCodec, type_id: int, data: st.DataObject
) -> None:
    msg = full_fields(data.draw(message_of(type_id)))
    seq, ack, flags = data.draw(headers())
    wire = mpy_encode(mpy, msg, seq, ack, flags)
    assert wire == encode_frame(msg.to_frame(seq=seq, ack=ack, flags=flags))
    dec = FrameDecoder()
    (frame,) = dec.feed(wire)
    assert (frame.type, frame.seq, frame.ack, frame.flags) == (type_id, seq, ack, flags)
    assert Message.from_frame(frame) == msg


def test_cobs_edge_of_a_full_254_byte_run_matches(mpy: MpyCodec) -> None:
    # Non-zero runs of 240..254 bytes and more (a 0xFF block, then the rest): the `cobs` package
    # writes no empty block after a 254-byte run that ends the frame. Both directions.
    for n in range(240, 255):
        msg = Message(MsgType.CONSOLE_DATA, {"port": 7, "data": bytes([0x11]) * n})
        for seq, ack in ((1, 1), (0, 0), (0xFF, 0xFF)):
            wire = encode_frame(msg.to_frame(seq=seq, ack=ack, flags=3))
            assert mpy_encode(mpy, msg, seq, ack, 3) == wire
            assert mpy_decode(mpy, wire)["events"] == [event(0x30, seq, ack, 3, fields_json(msg))]


# --- bad input: the same drop reason on both sides ----------------------------------------------


@given(corrupted_wire())
def test_damaged_frames_are_dropped_for_the_same_reason_on_both_sides(mpy: MpyCodec, wire: bytes) -> None:
    assert mpy_decode(mpy, wire) == cpython_decode(wire)


@given(raw_frames())
def test_crc_correct_frames_with_bad_fields_get_the_same_reason(mpy: MpyCodec, raw: bytes) -> None:
    wire = cobs.encode(raw) + b"\x00"
    assert mpy_decode(mpy, wire) == cpython_decode(wire)


@given(st.binary(max_size=600))
def test_random_bytes_are_dropped_alike(mpy: MpyCodec, noise: bytes) -> None:
    assert mpy_decode(mpy, noise + b"\x00") == cpython_decode(noise + b"\x00")


@given(st.lists(st.one_of(corrupted_wire(), st.binary(max_size=40)), max_size=8), st.data())
def test_a_stream_fed_in_random_pieces_decodes_alike(
    mpy: MpyCodec, pieces: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    mpy.ask("R")
    cpy = FrameDecoder()
    link_drops: Counter[str] = Counter()
    for chunk in chunks:
        frames = cpy.feed(chunk)
        got = mpy.ask("F", chunk.hex())
        assert got["events"] == cpython_events(frames)
        assert got["pending"] == cpy.pending
        link_drops += Counter(got["drops"]) - Counter(e["drop"] for e in got["events"] if "drop" in e)
    assert link_drops == cpy.drops


# overlong, surrogate, above U+10FFFF, truncated, invalid lead; then two valid ones
UTF8_CASES = ["c080", "c1bf", "e08080", "f0808080", "eda080", "f4908080", "f5808080", "e282", "ff"]


@pytest.mark.parametrize("text_hex", [*UTF8_CASES, "e282ac", "f09f9880"])
def test_utf8_is_as_strict_as_cpython(mpy: MpyCodec, text_hex: str) -> None:
    # MicroPython's own str() accepts overlong forms and surrogates; srp must not.
    body = bytes([1]) + (2).to_bytes(2, "little") + (3).to_bytes(4, "little") + bytes.fromhex(text_hex)
    raw = bytes([1, 0x40, 3, 0, 1, len(body)]) + body
    wire = cobs.encode(raw + zlib.crc32(raw).to_bytes(4, "little")) + b"\x00"
    assert mpy_decode(mpy, wire) == cpython_decode(wire)


# --- the golden vectors -------------------------------------------------------------------------


def _vector_files() -> list[Path]:
    return sorted(VECTORS.rglob("*.json"))


def _vectors(key: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in _vector_files():
        entries = json.loads(path.read_text())
        out.extend(e for e in entries if isinstance(e, dict) and key in e)
    return out


def test_there_are_golden_vectors_to_check() -> None:
    assert _vectors("frame_hex") and _vectors("wire_hex"), f"no vectors under {VECTORS}"


@pytest.mark.parametrize("vec", _vectors("frame_hex"), ids=lambda v: v["name"])
def test_golden_frame_vector_both_ways(mpy: MpyCodec, vec: dict[str, Any]) -> None:
    m = vec["message"]
    lay = LAYOUTS_BY_NAME[m["type"]]
    fields = dict(m["fields"])
    if lay.tail and lay.tail_kind == "bytes" and lay.tail in fields:
        fields[lay.tail] = bytes.fromhex(fields[lay.tail])
    msg = full_fields(Message(MsgType(lay.type_id), fields))
    wire = bytes.fromhex(vec["frame_hex"])
    assert mpy_encode(mpy, msg, m["seq"], m["ack"], m["flags"]) == wire
    got = mpy_decode(mpy, wire)
    assert got["events"] == [event(lay.type_id, m["seq"], m["ack"], m["flags"], fields_json(msg))]


@pytest.mark.parametrize("vec", _vectors("wire_hex"), ids=lambda v: f"{v['reason']}-{v['meaning'][:30]}")
def test_golden_drop_vector(mpy: MpyCodec, vec: dict[str, Any]) -> None:
    got = mpy_decode(mpy, bytes.fromhex(vec["wire_hex"]))
    reasons = list(got["drops"]) + [e["drop"] for e in got["events"] if "drop" in e]
    assert reasons == [vec["reason"]]
