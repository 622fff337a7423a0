"""Framing: COBS + header + CRC-32, and the stream decoder's resynchronisation."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.protocol import Frame, FrameDecoder, FrameError, decode_frame, encode_frame, layouts
from scalerunner.protocol.framing import pack_frame, unpack_frame
from tests.strategies import frames, raw_frames


@given(raw_frames)
def test_any_frame_round_trips_and_wire_has_one_zero_at_the_end(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    assert len(wire) <= layouts.MAX_ENCODED + 1
    assert decode_frame(wire[:-1]) == frame


def test_frame_layout_matches_the_reference_by_hand() -> None:
    # Built from first principles (not by the codec): header, body, zlib CRC, COBS.
    raw = bytes([1, 0x02, 5, 0, 0x01, 4]) + (1).to_bytes(4, "little")
    raw += zlib.crc32(raw).to_bytes(4, "little")
    # COBS: the zeros at 3, 7, 8, 9 split it into runs [01 02 05] [01 04 01] [] [] [crc...]
    assert pack_frame(Frame(type=2, seq=5, flags=1, body=(1).to_bytes(4, "little"))) == raw
    wire = encode_frame(Frame(type=2, seq=5, flags=1, body=(1).to_bytes(4, "little")))
    assert wire[:4] == bytes([0x04, 0x01, 0x02, 0x05])
    assert wire[4:10] == bytes([0x04, 0x01, 0x04, 0x01, 0x01, 0x01])


def test_crc_is_crc32_iso_hdlc() -> None:
    assert zlib.crc32(b"123456789") == 0xCBF43926


@given(frames(), st.data())
def test_every_single_bit_error_on_the_wire_is_detected(frame: Frame, data: st.DataObject) -> None:
    wire = encode_frame(frame)[:-1]
    for pos in range(len(wire)):
        for bit in range(8):
            bad = bytearray(wire)
            bad[pos] ^= 1 << bit
            dec = FrameDecoder()
            got = dec.feed(bytes(bad) + b"\x00")
            # A flip may create a 0x00 and split the frame: no piece may pass as a frame.
            assert got == [], f"flip of bit {bit} at byte {pos} went undetected"
            assert sum(dec.drops.values()) >= 1


@given(frames(), st.data())
def test_every_burst_up_to_32_bits_in_the_frame_is_detected(frame: Frame, data: st.DataObject) -> None:
    raw = pack_frame(frame)
    nbits = len(raw) * 8
    length = data.draw(st.integers(1, 32), label="burst length")
    start = data.draw(st.integers(0, nbits - length), label="burst start")
    # a burst: first and last bit flipped, anything in between
    inner = data.draw(st.integers(0, (1 << max(length - 2, 0)) - 1), label="inner bits") if length > 2 else 0
    pattern = 1 | (inner << 1) | (1 << (length - 1))
    value = int.from_bytes(raw, "big") ^ (pattern << (nbits - start - length))
    bad = value.to_bytes(len(raw), "big")
    with pytest.raises(FrameError):
        unpack_frame(bad)


@given(st.lists(frames(), min_size=1, max_size=5), st.binary(max_size=600), st.integers(1, 64))
def test_after_garbage_the_decoder_resynchronises_at_the_next_frame(
    good: list[Frame], garbage: bytes, chunk: int
) -> None:
    # garbage, then a delimiter (the next frame boundary), then good frames:
    # every good frame comes out, whatever the garbage and however the bytes are chunked
    stream = garbage + b"\x00" + b"".join(encode_frame(f) for f in good)
    dec = FrameDecoder()
    out: list[Frame] = []
    for i in range(0, len(stream), chunk):
        out.extend(dec.feed(stream[i : i + chunk]))
    # garbage may itself decode as a valid frame only with negligible chance; the good ones are last
    assert out[len(out) - len(good) :] == good


@given(st.binary(max_size=2000))
def test_decoder_never_raises_and_counts_every_drop_with_a_known_reason(data: bytes) -> None:
    from scalerunner.protocol import DROP_REASONS

    dec = FrameDecoder()
    dec.feed(data + b"\x00")
    assert set(dec.drops) <= set(DROP_REASONS)
    assert dec.pending == 0


def test_incomplete_frame_is_kept_until_its_delimiter() -> None:
    wire = encode_frame(Frame(type=2, seq=1, body=b"\x01\x02\x03\x04"))
    dec = FrameDecoder()
    assert dec.feed(wire[:-1]) == []
    assert dec.pending == len(wire) - 1 and not dec.drops
    assert dec.feed(b"\x00") == [Frame(type=2, seq=1, body=b"\x01\x02\x03\x04")]


def test_oversize_input_is_dropped_once_and_the_next_frame_survives() -> None:
    dec = FrameDecoder()
    wire = encode_frame(Frame(type=2, body=bytes(4)))
    assert dec.feed(b"\x55" * 5000) == []
    assert dec.pending == 0  # nothing unbounded is held
    assert dec.feed(b"\x00" + wire) == [Frame(type=2, body=bytes(4))]
    assert dec.drops == {"oversize": 1}


def test_idle_zero_fill_is_not_a_drop() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00\x00") == []
    assert not dec.drops


def test_encoder_refuses_a_body_over_255_bytes() -> None:
    with pytest.raises(FrameError, match="oversize"):
        encode_frame(Frame(type=0x30, body=bytes(256)))
