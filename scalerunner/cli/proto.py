"""`scalerunner proto ...`: the framed serial protocol at the command line.

For bring-up: decode bytes captured from a UART (logic analyser, `xxd` of a
capture), build a frame by hand, list the golden vectors, and watch a live
exchange with a real MicroPython peer (`proto demo`, what `make demo` runs).
"""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from ..protocol import LAYOUTS_BY_NAME, FrameDecoder, FrameError, Message, encode_frame, golden
from ..protocol.enums import Flags
from ..protocol.errors import EncodeError
from . import exits
from .trace import describe_frame


@click.group()
def proto() -> None:
    """Encode, decode and demonstrate the framed serial protocol."""


@proto.command()
@click.argument("hexdata", nargs=-1, required=True)
def decode(hexdata: tuple[str, ...]) -> None:
    """Decode wire bytes given as hex (spaces and colons allowed), one line per frame.

    Exits 1 if any frame was dropped; each drop is printed with its reason.
    """
    text = "".join(hexdata).replace(":", "").replace(" ", "")
    try:
        data = bytes.fromhex(text)
    except ValueError as exc:
        raise click.UsageError(f"not hex: {exc}") from exc
    drops: list[FrameError] = []
    dec = FrameDecoder(on_drop=drops.append)
    frames = dec.feed(data if data.endswith(b"\x00") else data + b"\x00")
    for frame in frames:
        click.echo(describe_frame(frame))
    for err in drops:
        click.echo(f"dropped: {err}", err=True)
    sys.exit(exits.FAILED if drops else exits.OK)


def _parse_value(raw: str) -> int | bytes | str:
    if raw.startswith("hex:"):
        return bytes.fromhex(raw[4:])
    if raw.startswith("text:"):
        return raw[5:]
    return int(raw, 0)


@proto.command()
@click.argument("message_type")
@click.argument("fields", nargs=-1)
@click.option("--seq", default=0, type=click.IntRange(0, 255))
@click.option("--ack", default=0, type=click.IntRange(0, 255))
@click.option(
    "--flag",
    "flag_names",
    multiple=True,
    type=click.Choice([f.name for f in Flags]),
    help="header flag, repeatable",
)
def encode(
    message_type: str, fields: tuple[str, ...], seq: int, ack: int, flag_names: tuple[str, ...]
) -> None:
    """Print the wire bytes (hex) of MESSAGE_TYPE with FIELDS as name=value.

    Integers may be decimal or 0x-hex; tails take hex:0102 (bytes) or text:... (text).
    Example: scalerunner proto encode LED_SET mode=1 r=255 g=0 b=0 brightness=64 period_ms=0 --flag ACKREQ
    """
    lay = LAYOUTS_BY_NAME.get(message_type.upper())
    if lay is None:
        raise click.UsageError(f"unknown message type {message_type!r}; known: {', '.join(LAYOUTS_BY_NAME)}")
    values: dict[str, int | bytes | str] = {}
    for item in fields:
        name, sep, raw = item.partition("=")
        if not sep:
            raise click.UsageError(f"field {item!r} is not name=value")
        try:
            values[name] = _parse_value(raw)
        except ValueError as exc:
            raise click.UsageError(f"field {name!r}: {exc}") from exc
    flags = 0
    for name in flag_names:
        flags |= Flags[name]
    try:
        msg = Message.make(lay.name, **values)
    except EncodeError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(encode_frame(msg.to_frame(seq=seq, ack=ack, flags=flags)).hex())


@proto.command()
def vectors() -> None:
    """List the golden vectors: wire bytes and what they mean."""
    table = Table(title="golden vectors (scalerunner/protocol/vectors/frames.json)")
    table.add_column("name")
    table.add_column("meaning")
    table.add_column("wire (hex)", overflow="fold")
    for vec in golden.load_vectors():
        table.add_row(vec["name"], vec["meaning"], vec["frame_hex"])
    Console().print(table)


from .demo import demo  # noqa: E402  (the demo command lives in its own module)

proto.add_command(demo)
