"""The struct codec (protocol/lite.py) agrees byte for byte with the construct codec (framing + messages)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.protocol import lite
from scalerunner.protocol.enums import MsgType
from scalerunner.protocol.errors import EncodeError, FrameError
from scalerunner.protocol.framing import Frame, FrameDecoder, encode_frame
from scalerunner.protocol.golden import DROPS_JSON, FRAMES_JSON
from scalerunner.protocol.messages import LAYOUTS, Message, decode_body, encode_body
from tests.strategies import messages, raw_frames


def _lite(frame: Frame) -> lite.LiteFrame:
    return lite.LiteFrame(frame.type, frame.seq, frame.ack, frame.flags, frame.body, frame.version)


def test_both_codecs_know_the_same_layouts() -> None:
    assert {t: lay.name for t, lay in LAYOUTS.items()} == {t: lay.name for t, lay in lite.LAYOUTS.items()}
    for t, lay in LAYOUTS.items():
        assert (lay.fixed_size, lay.max_tail, lay.tail) == (
            lite.LAYOUTS[t].fixed.size,
            lite.LAYOUTS[t].max_tail,
            lite.LAYOUTS[t].tail,
        )


@given(messages)
def test_every_message_encodes_to_the_same_body_and_decodes_back(msg: Message) -> None:
    body = encode_body(msg)
    assert lite.encode_body(int(msg.type), dict(msg.fields)) == body
    assert lite.decode_body(int(msg.type), body) == dict(decode_body(int(msg.type), body).fields)


@given(st.integers(0, 255), st.binary(max_size=260))
def test_any_body_decodes_alike_or_is_refused_for_the_same_reason(type_id: int, body: bytes) -> None:
    try:
        want: dict[str, object] | str = dict(decode_body(type_id, body).fields)
    except FrameError as err:
        want = err.reason
    try:
        got: dict[str, object] | str = dict(lite.decode_body(type_id, body))
    except FrameError as err:
        got = err.reason
    assert got == want


@given(
    st.sampled_from(sorted(LAYOUTS)),
    st.dictionaries(
        st.sampled_from(["mode", "token", "load_pct", "temp_dc", "text", "uid", "x"]),
        st.integers(-70000, 70000) | st.text(max_size=300) | st.binary(max_size=300) | st.booleans(),
    ),
)
def test_a_message_one_codec_refuses_the_other_refuses_too(type_id: int, fields: dict[str, object]) -> None:
    try:
        want: bytes | None = encode_body(Message(MsgType(type_id), fields))  # type: ignore[arg-type]
    except EncodeError:
        want = None
    try:
        got: bytes | None = lite.encode_body(type_id, fields)  # type: ignore[arg-type]
    except EncodeError:
        got = None
    assert got == want


@given(raw_frames)
def test_every_frame_has_the_same_wire_bytes(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert lite.encode_frame(_lite(frame)) == wire
    assert lite.decode_frame(wire[:-1]) == _lite(frame)


@given(st.binary(max_size=300))
def test_any_bytes_decode_alike_or_are_dropped_for_the_same_reason(data: bytes) -> None:
    ref, ours = FrameDecoder(), lite.LiteDecoder()
    assert [_lite(f) for f in ref.feed(data)] == ours.feed(data)
    assert dict(ref.drops) == dict(ours.drops)


def test_the_golden_vectors_decode_to_their_meaning_and_encode_back() -> None:
    cases = json.loads(FRAMES_JSON.read_text())
    assert cases
    for case in cases:
        wire = bytes.fromhex(case["frame_hex"])
        frame = lite.decode_frame(wire[:-1])
        meaning = case["message"]
        type_id = lite.TYPE_IDS[meaning["type"]]
        head = (frame.type, frame.seq, frame.ack, frame.flags)
        assert head == (type_id, meaning["seq"], meaning["ack"], meaning["flags"]), case["name"]
        lay = lite.LAYOUTS[type_id]
        expected = dict(meaning["fields"])
        if lay.tail and not lay.tail_str:
            expected[lay.tail] = bytes.fromhex(expected[lay.tail])
        assert lite.decode_body(frame.type, frame.body) == expected, case["name"]
        assert lite.encode_body(type_id, expected) == frame.body, case["name"]
        assert lite.encode_frame(frame) == wire, case["name"]


def test_the_malformed_vectors_are_dropped_for_their_reason() -> None:
    cases = json.loads(DROPS_JSON.read_text())
    assert cases
    for case in cases:
        dec = lite.LiteDecoder()
        frames = dec.feed(bytes.fromhex(case["wire_hex"]))
        if case["reason"] in ("unknown_type", "body"):  # a good frame whose body the link refuses
            assert len(frames) == 1 and not dec.drops, case["meaning"]
            with pytest.raises(FrameError) as err:
                lite.decode_body(frames[0].type, frames[0].body)
            assert err.value.reason == case["reason"], case["meaning"]
        else:
            assert frames == [] and dict(dec.drops) == {case["reason"]: 1}, case["meaning"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"load_pct": -1, "temp_dc": 300}, "'load_pct'=-1"),
        ({"load_pct": 50, "temp_dc": 40000}, "'temp_dc'=40000"),
        ({"load_pct": 50}, "'temp_dc' missing"),
        ({"load_pct": 50, "temp_dc": 1, "colour": 3}, "colour"),
    ],
)
def test_a_gauge_that_does_not_fit_its_layout_is_refused_naming_the_field(
    fields: dict[str, int], named: str
) -> None:
    with pytest.raises(EncodeError, match=named) as err:
        lite.encode_body(lite.TYPE_IDS["LED_GAUGE"], dict(fields))
    assert err.value.message_type == "LED_GAUGE"
