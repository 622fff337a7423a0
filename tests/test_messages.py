"""Message bodies, the layouts table and the golden vectors (CPython codec)."""

from __future__ import annotations

import enum

import pytest
from hypothesis import given

from scalerunner.protocol import (
    LAYOUTS,
    EncodeError,
    FrameDecoder,
    FrameError,
    Message,
    MsgType,
    decode_body,
    decode_frame,
    encode_frame,
    enums,
    golden,
    layouts,
)
from tests.strategies import frames, messages


@given(messages)
def test_every_message_type_round_trips_through_a_frame(msg: Message) -> None:
    frame = msg.to_frame(seq=3, ack=4, flags=1)
    assert Message.from_frame(decode_frame(encode_frame(frame)[:-1])) == msg


@given(frames())
def test_decoded_frames_carry_their_header_fields(frame) -> None:  # type: ignore[no-untyped-def]
    assert decode_frame(encode_frame(frame)[:-1]) == frame


def test_enums_mirror_the_layouts_table_exactly() -> None:
    assert {m.name: int(m) for m in MsgType} == {name: tid for name, tid, *_ in layouts.MESSAGES}
    for enum_name, members in layouts.ENUMS:
        cls = getattr(enums, enum_name)
        assert issubclass(cls, enum.IntEnum)
        assert {m.name: int(m) for m in cls} == dict(members), enum_name
    flag_names = {k[5:]: v for k, v in vars(layouts).items() if k.startswith("FLAG_")}
    assert {f.name: int(f) for f in enums.Flags} == flag_names


def test_type_ids_are_unique_and_every_body_fits_255_bytes() -> None:
    ids = [tid for _, tid, *_ in layouts.MESSAGES]
    assert len(ids) == len(set(ids))
    assert all(lay.fixed_size <= layouts.MAX_BODY for lay in LAYOUTS.values())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Message.make("PING"), "field 'token' missing"),
        (lambda: Message.make("PING", token=-1), r"'token'=-1 is not an integer in \[0, 4294967295\]"),
        (lambda: Message.make("LED_GAUGE", load_pct=50, temp_dc=40000), "temp_dc"),
        (lambda: Message.make("PING", token=1, colour=3), r"unknown field\(s\) \['colour'\]"),
        (lambda: Message.make("CONSOLE_DATA", port=0, data=bytes(255)), "at most 254"),
        (lambda: Message.make("EVENT", level=1, code=1, time_ms=0, text=b"x"), "must be text"),
        (lambda: Message.make("PING", token=True), "token"),
    ],
)
def test_bad_messages_fail_where_they_are_made_naming_type_and_field(make, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EncodeError, match=match):
        make()


def test_a_body_of_the_wrong_size_is_a_body_error() -> None:
    with pytest.raises(FrameError) as err:
        decode_body(int(MsgType.PING), b"\x01\x02")
    assert err.value.reason == "body" and "PING body is 2 bytes, expected 4" in str(err.value)


def test_unknown_type_is_its_own_reason() -> None:
    with pytest.raises(FrameError) as err:
        decode_body(0x55, b"")
    assert err.value.reason == "unknown_type"


@pytest.mark.parametrize("vec", golden.load_vectors(), ids=lambda v: v["name"])
def test_golden_vector_encodes_to_its_bytes_and_decodes_to_its_meaning(vec) -> None:  # type: ignore[no-untyped-def]
    frame, msg = golden.vector_frame(vec)
    wire = bytes.fromhex(vec["frame_hex"])
    assert encode_frame(frame) == wire
    decoded = decode_frame(wire[:-1])
    assert decoded == frame
    assert Message.from_frame(decoded) == msg


def test_golden_vectors_cover_every_message_type() -> None:
    names = {v["message"]["type"] for v in golden.load_vectors()}
    assert names == {m.name for m in MsgType}


def test_golden_vectors_file_is_what_the_cases_generate() -> None:
    assert golden.load_vectors() == golden.build_vectors()
    assert golden.load_drops() == golden.build_drops()


@pytest.mark.parametrize("vec", golden.load_drops(), ids=lambda v: f"{v['reason']}")
def test_malformed_vector_is_dropped_with_its_reason(vec) -> None:  # type: ignore[no-untyped-def]
    dec = FrameDecoder()
    frames_out = dec.feed(bytes.fromhex(vec["wire_hex"]))
    if vec["reason"] in ("unknown_type", "body"):
        # these pass the link checks; the body decoder is what refuses them
        assert len(frames_out) == 1
        with pytest.raises(FrameError) as err:
            Message.from_frame(frames_out[0])
        assert err.value.reason == vec["reason"]
    else:
        assert frames_out == []
        assert dec.drops == {vec["reason"]: 1}


def test_describe_names_enum_values() -> None:
    msg = Message.make("LED_SET", mode=5, r=255, g=255, b=255, brightness=40, period_ms=100)
    assert msg.describe() == "LED_SET mode=IDENTIFY r=255 g=255 b=255 brightness=40 period_ms=100"
