"""The firmwares under the real MicroPython unix port, on ptys, driven from the host's ``Link``.

Console bridge (bmc/main.py): the node's UART is a second pty. The BMC's console ring holds 4 096 bytes
and drops what does not fit (counted, never silent), so the "node" here writes only while fewer than
4 096 bytes are between it and the host (written to the UART but not yet read from the console channel):
the ring can then never overflow, and the figure is the bridge's goodput, not a loss rate. The clock runs
from the first byte written to the last byte read; the bytes must arrive intact and in order, and the
firmware's own counters must say nothing was dropped. The host -> node direction writes the blob to the
console channel and reads it back from the UART pty.

The peer of both is the same kind of pty pair moving the same bytes with a plain writer thread and
reader (no firmware, no protocol), measured just before and after: what the pty alone allows. A real
node UART at 115 200 8N1 moves 11 520 B/s; that is printed for context (the unix port has no baud rate).

LED latency (ledfw/main.py): the host sends LED_SET (reliable, not waiting for its ACK) and then asks
STATUS_GET until the firmware's answer shows the new mode and pixels, alternating two colours so that
every command changes them; the median over the commands. The firmware polls its link every 5 ms and
answers STATUS_GET by drawing a frame first (ledfw/fw.py), so what this sees is the command applied and
rendered by that frame: about one poll-bound round trip. Its render loop draws a frame every 20 ms
(50 fps) on its own; on the LEDs, without a STATUS_GET, a command would show at the next such frame,
0..20 ms later still, which the host cannot observe on the unix port (the pixels stay in memory). The
peer is the median PING -> PONG round trip on the same link, measured interleaved with the commands:
the floor of any command that must be seen to take effect.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import select
import statistics
import subprocess
import threading
import time
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import Figure
from scalerunner.firmware import find_tool, micropypath
from scalerunner.protocol import Message, MsgType
from scalerunner.protocol.link import Link
from scalerunner.protocol.link.streams import FdStream

REPO = Path(__file__).resolve().parents[1]
STEP = 10.0  # seconds any single exchange may take
LINE_RATE = 115_200 / 10  # a real node UART at 115 200 8N1, bytes per second
RING = 4096  # the BMC's console ring (bmc/console.py)
TO_HOST = 200_000  # console bytes node -> host
TO_NODE = 100_000  # console bytes host -> node
RAW = 16_000_000  # bytes through the plain pty peer
ROUNDS = 3  # of each console measurement; the median is reported
LED_COMMANDS = 50
WARMUP = 3  # commands not counted (the boot self-test is still on)
FRAME_MS = 20  # ledfw's render period (ledfw/README.md)
POLL_MS = 5  # ledfw polls its link this often
EV_STATE = 0x0110
CAP = 102  # ledfw's brightness cap: a full channel renders as 102


def micropython_binary() -> str:
    found = find_tool("micropython")
    if found is None:
        raise RuntimeError("the micropython unix port is not installed (make setup installs it)")
    return found


def spaced(x: float) -> str:
    return f"{x:,.0f}".replace(",", " ")


@dataclass
class Pty:
    master: int
    slave: int
    path: str

    @classmethod
    def open(cls) -> Pty:
        master, slave = os.openpty()
        tty.setraw(slave)  # raw before anyone opens it: no echo, no line discipline
        tty.setraw(master)
        return cls(master, slave, os.ttyname(slave))

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with suppress(OSError):
                os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_exactly(fd: int, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        ready, _, _ = select.select([fd], [], [], STEP)
        if not ready:
            raise TimeoutError(f"only {len(got)} of {n} bytes arrived")
        got += os.read(fd, 65536)
    return bytes(got)


def raw_pty_rate(size: int = RAW) -> float:
    """Bytes per second a pty pair moves from master to slave with a plain writer thread and reader."""
    pty = Pty.open()
    blob = random.Random(2).randbytes(size)
    try:
        writer = threading.Thread(target=write_all, args=(pty.master, blob))
        t0 = time.perf_counter()
        writer.start()
        got = read_exactly(pty.slave, size)
        elapsed = time.perf_counter() - t0
        writer.join()
    finally:
        pty.close()
    if got != blob:
        raise AssertionError("the plain pty altered the bytes")
    return size / elapsed


@dataclass
class Session:
    link: Link
    uart: Pty  # the node's UART (BMC only): write to ``uart.master`` as the node, read what it was sent
    output: str = ""  # what the firmware printed, once it has exited


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen[bytes]) -> str:
    """Wait for the firmware to exit (its line is closed), killing it if it does not; what it printed."""
    try:
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode(errors="replace")


@asynccontextmanager
async def firmware(main: Path, *args: str, node: bool = False) -> AsyncIterator[Session]:
    """Run ``main`` under MicroPython on a fresh pty (and a node UART pty); always stopped at the end."""
    line, uart = Pty.open(), Pty.open()
    argv = [micropython_binary(), str(main), line.path, *([uart.path] if node else []), *args]
    env = {**os.environ, "MICROPYPATH": micropypath(main.parent)}
    try:
        proc = start(argv, env)
    except BaseException:
        line.close()
        uart.close()
        raise
    session: Session | None = None
    try:
        async with Link(FdStream(os.dup(line.master), f"pty:{line.path}")) as link:
            session = Session(link, uart)
            async with asyncio.timeout(STEP):
                while (await link.recv()).type != MsgType.HELLO:
                    pass
            yield session
    finally:
        os.close(line.master)  # the firmware exits by itself when its line closes
        line.master = -1
        out = stop(proc)
        line.close()
        uart.close()
        if session is not None:
            session.output = out


def counters(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}


async def console_rates() -> tuple[list[float], list[float], dict[str, int]]:
    """Goodput node -> host and host -> node through the BMC firmware, bytes per second, per round."""
    upward: list[float] = []
    downward: list[float] = []
    async with firmware(REPO / "bmc" / "main.py", node=True) as bmc:
        link, uart = bmc.link, bmc.uart
        for r in range(ROUNDS):
            up = random.Random(3 + r).randbytes(TO_HOST)
            got = bytearray()
            sent = 0
            t0 = time.perf_counter()
            async with asyncio.timeout(STEP * 3):
                while len(got) < len(up):
                    room = RING - (sent - len(got))  # never more than the ring between the node and the host
                    if room > 0 and sent < len(up):
                        n = min(room, len(up) - sent)
                        write_all(uart.master, up[sent : sent + n])
                        sent += n
                    got += await link.console.read(0)
            upward.append(len(up) / (time.perf_counter() - t0))
            if bytes(got) != up:
                raise AssertionError("node -> host: the console bytes arrived altered")

            down = random.Random(100 + r).randbytes(TO_NODE)
            t0 = time.perf_counter()
            reader = asyncio.create_task(asyncio.to_thread(read_exactly, uart.master, len(down)))
            await link.console.write(down, port=0)
            back = await reader
            downward.append(len(down) / (time.perf_counter() - t0))
            await link.console.drain()
            if back != down:
                raise AssertionError("host -> node: the console bytes arrived altered")
    final = counters(bmc.output)
    if final.get("console_dropped") != 0 or final.get("to_host") != TO_HOST * ROUNDS:
        raise AssertionError(f"the BMC's counters do not match what was sent: {bmc.output.strip()}")
    return upward, downward, final


async def led_latency() -> tuple[list[float], list[float]]:
    """LED_SET -> shown latencies and PING -> PONG round trips, seconds, interleaved."""
    colours = [(255, 0, 0), (0, 0, 255)]
    latencies: list[float] = []
    rtts: list[float] = []
    async with firmware(REPO / "ledfw" / "main.py", "60000") as led:
        link = led.link

        async def reply(kind: MsgType, code: int | None = None) -> Message:
            while True:
                msg = await link.recv()
                if msg.type == kind and (code is None or msg["code"] == code):
                    return msg

        async with asyncio.timeout(STEP * 3):
            for i in range(LED_COMMANDS + WARMUP):  # the first ones also wait out the boot self-test
                r, g, b = colours[i % 2]
                want = f"px={bytes(min(c, CAP) for c in (r, g, b)).hex()}"
                set_msg = Message.make("LED_SET", mode=1, r=r, g=g, b=b, brightness=255, period_ms=0)
                t0 = time.perf_counter()
                await link.send(set_msg, wait=False)
                while True:
                    await link.send(Message.make("STATUS_GET"), wait=False)
                    text = str((await reply(MsgType.EVENT, EV_STATE))["text"])
                    if "mode=SOLID" in text and want in text:
                        break
                latency = time.perf_counter() - t0
                t0 = time.perf_counter()
                await link.send(Message.make("PING", token=i), wait=False)
                while (await reply(MsgType.PONG))["token"] != i:
                    pass
                rtt = time.perf_counter() - t0
                if i >= WARMUP:
                    latencies.append(latency)
                    rtts.append(rtt)
    return latencies, rtts


def run() -> list[Figure]:
    raws = [raw_pty_rate() for _ in range(ROUNDS)]
    upward, downward, final = asyncio.run(console_rates())
    raws += [raw_pty_rate() for _ in range(ROUNDS)]
    raw = statistics.median(raws)
    up, down = statistics.median(upward), statistics.median(downward)
    latencies, rtts = asyncio.run(led_latency())
    latency, rtt = statistics.median(latencies), statistics.median(rtts)
    against = f"plain pty pair, writer thread + reader: {spaced(raw)} B/s (median of {len(raws)})"
    of_line = f"x a 115200 8N1 line ({spaced(LINE_RATE)} B/s)"
    return [
        Figure(
            f"BMC console bridge node -> host, {spaced(TO_HOST)} B, median of {ROUNDS} (unix port)",
            f"{spaced(up)} B/s = {up / LINE_RATE:.1f}{of_line}, dropped {final['console_dropped']}",
            against,
            up / raw,
        ),
        Figure(
            f"BMC console bridge host -> node, {spaced(TO_NODE)} B, median of {ROUNDS} (unix port)",
            f"{spaced(down)} B/s = {down / LINE_RATE:.1f}{of_line}",
            against,
            down / raw,
        ),
        Figure(
            f"ledfw LED_SET -> shown by STATUS_GET, median of {LED_COMMANDS} (unix port; render loop"
            f" {FRAME_MS} ms, link poll {POLL_MS} ms)",
            f"{latency * 1000:.2f} ms (p90 {statistics.quantiles(latencies, n=10)[-1] * 1000:.2f} ms)",
            f"PING -> PONG round trip on the same link: {rtt * 1000:.2f} ms (median of {len(rtts)})",
            latency / rtt,
        ),
    ]
