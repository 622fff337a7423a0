"""`scalerunner proto demo`: a live exchange with a real MicroPython peer over a pty.

The device side is ``scalerunner/protocol/mpy/demo_peer.py`` running under the
MicroPython unix port, the very codec and link the RP2040 firmware runs; the
host side is the asyncio ``Link``. Every frame that crosses the line is printed
decoded, in the order it was sent or received.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from ..firmware import MPY_DIR, find_tool, micropypath
from ..protocol import Frame, LedMode, Message, MsgType, PeerTimeout
from ..protocol.link import Link, open_fd_stream
from . import exits
from .trace import describe_frame


async def _expect(link: Link, msg_type: MsgType, within: float = 5.0) -> Message:
    async def wait() -> Message:
        while True:
            msg = await link.recv()
            if msg.type == msg_type:
                return msg

    return await asyncio.wait_for(wait(), within)


async def run_demo(console: Console, micropython: str) -> int:
    master, slave = os.openpty()
    pts = os.ttyname(slave)
    env = dict(os.environ, MICROPYPATH=micropypath())
    proc = await asyncio.create_subprocess_exec(
        micropython,
        str(MPY_DIR / "demo_peer.py"),
        pts,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    t0 = time.monotonic()

    def trace(direction: str, frame: Frame) -> None:
        arrow = "host → dev" if direction == "tx" else "host ← dev"
        style = "cyan" if direction == "tx" else "green"
        line = describe_frame(frame, max_bytes=12)
        stamp = f"[dim]{time.monotonic() - t0:6.3f}s[/dim]"
        console.print(f"{stamp} [{style}]{arrow}[/{style}] {line}", highlight=False, soft_wrap=True)

    def step(text: str) -> None:
        console.print(f"\n[bold]{text}[/bold]")

    stream = open_fd_stream(master, name=f"pty {pts}")
    try:
        async with Link(stream, rto_init=0.2, max_retries=5, trace=trace) as link:
            step(f"A MicroPython peer starts on {pts} and says HELLO")
            hello = await _expect(link, MsgType.HELLO)
            # The peer has the pty open now; drop our copy so its exit reads as end of file.
            os.close(slave)
            slave = -1
            step("PING → PONG")
            await link.send(Message.make("PING", token=0xC0FFEE))
            pong = await _expect(link, MsgType.PONG)
            assert pong["token"] == 0xC0FFEE
            step("LED: solid blue, then a load gauge (unreliable telemetry)")
            await link.send(
                Message.make(
                    "LED_SET", mode=int(LedMode.SOLID), r=0, g=64, b=255, brightness=128, period_ms=0
                )
            )
            await link.send(Message.make("LED_GAUGE", load_pct=73, temp_dc=455), reliable=False)
            text = b"".join(b"line %02d: the quick brown fox\n" % i for i in range(20))
            step(f"Console channel: {len(text)} bytes out, echoed back in order")
            await link.console.write(text)
            await link.console.drain()
            echoed = b""
            while len(echoed) < len(text):
                echoed += await asyncio.wait_for(link.console.read(), 5)
            console.print(f"echo intact: {echoed == text} ({len(echoed)} bytes)")
            step("Garbage on the line: the device drops what it cannot decode and resynchronises")
            garbage = b"\x13\x37garbage\xff\xfe\x00"
            os.write(master, garbage)
            console.print(
                f"[red]host writes {len(garbage)} bytes of garbage: {garbage.hex()}[/red]", highlight=False
            )
            await link.send(Message.make("PING", token=2))
            await _expect(link, MsgType.PONG)
            report = await _expect(link, MsgType.EVENT, within=5)
            console.print(f"device reports: {report['text']!s}")
            step("BMC-style status request")
            await link.send(Message.make("STATUS_GET"))
            await _expect(link, MsgType.STATUS)
            _print_stats(console, link, hello)
            return exits.OK
    except (PeerTimeout, TimeoutError) as exc:
        err = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
        console.print(f"[red]demo failed: {exc or 'timed out'}[/red]\n{err}")
        return exits.UNREACHABLE
    finally:
        if slave >= 0:
            os.close(slave)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 3)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _print_stats(console: Console, link: Link, hello: Message) -> None:
    uid = hello["uid"]
    table = Table(title=f"host link counters (peer uid {uid.hex() if isinstance(uid, bytes) else uid})")
    table.add_column("counter")
    table.add_column("host", justify="right")
    for key, value in sorted(link.stats.as_dict().items()):
        table.add_row(key, str(value))
    console.print(table)


@click.command()
def demo() -> None:
    """Run a live, decoded frame exchange with a MicroPython peer over a pty pair."""
    console = Console()
    micropython = find_tool("micropython")
    if micropython is None:
        console.print("[red]the MicroPython unix port is not installed (`make setup` installs it)[/red]")
        sys.exit(exits.UNREACHABLE)
    sys.exit(asyncio.run(run_demo(console, micropython)))
