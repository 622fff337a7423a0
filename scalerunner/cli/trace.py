"""One readable line per frame, for traces and `proto decode`."""

from __future__ import annotations

from ..protocol import Frame, FrameError, Message
from ..protocol.enums import Flags


def flag_text(flags: int) -> str:
    names = [f.name for f in Flags if flags & f and f.name]
    return "|".join(names) if names else "-"


def describe_frame(frame: Frame, max_bytes: int | None = None) -> str:
    head = f"seq={frame.seq:3d} ack={frame.ack:3d} flags={flag_text(frame.flags):<14}"
    try:
        body = Message.from_frame(frame).describe(max_bytes)
    except FrameError as err:
        body = f"<{err.reason}: {err.detail}>"
    return f"{head} {body}"
