"""hypothesis strategies for protocol messages and frames, shared by the tests."""

from __future__ import annotations

from hypothesis import strategies as st

from scalerunner.protocol import LAYOUTS, Frame, Message, MsgType, layouts


def message_of(type_id: int) -> st.SearchStrategy[Message]:
    lay = LAYOUTS[type_id]
    parts: dict[str, st.SearchStrategy[object]] = {}
    for name, _fmt in lay.fields:
        lo, hi = lay.field_range(name)
        parts[name] = st.integers(lo, hi)
    if lay.tail:
        if lay.tail_kind == "str":
            parts[lay.tail] = st.text(max_size=lay.max_tail // 4)
        else:
            parts[lay.tail] = st.binary(max_size=lay.max_tail)
    return st.fixed_dictionaries(parts).map(lambda f: Message(MsgType(type_id), f))


messages = st.sampled_from(sorted(LAYOUTS)).flatmap(message_of)
u8 = st.integers(0, 255)
flags = st.integers(0, layouts.FLAGS_KNOWN)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    msg = draw(messages)
    return msg.to_frame(seq=draw(u8), ack=draw(u8), flags=draw(flags))


raw_frames = st.builds(Frame, type=u8, seq=u8, ack=u8, flags=flags, body=st.binary(max_size=layouts.MAX_BODY))
