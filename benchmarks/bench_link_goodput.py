"""Console goodput of the link layer: payload bytes delivered in order per second, against the line.

Two asyncio ``Link``s talk over the real-time line simulator (``scalerunner.protocol.linksim``) at 115 200
and 3 000 000 baud 8N1, whose line rate is ``baud / 10`` bytes per second. One side writes a random blob to
its console (CONSOLE_DATA messages, sent reliably, without waiting for each ACK), the other reads it back;
the clock runs from the first write to the last byte read, and the blob must arrive intact.

Cases:

- clean line, full 254-byte chunks: a frame is 267..268 bytes on the wire for 254 of payload, so the
  best possible is 0.95 of line rate; target 0.90.
- 1% of frames corrupted (each frame has one byte corrupted with probability 1%): go-back-N resends the
  window after each loss; target 0.75.
- 1% of bytes corrupted, independently. A frame of ``w`` wire bytes then survives with probability
  ``0.99 ** w`` only, and for a chunk of ``c`` payload bytes ``w = c + 13`` (header 6, port 1, CRC 4,
  COBS 1, delimiter 1). No ARQ without forward error correction does better than
  ``ceiling(c) = c / (c + 13) * 0.99 ** (c + 13)`` of line rate (every frame sent once unless hit;
  feedback free): 0.45 at best, near c = 30. The chunk size (and window) below are the ones that did
  best for this rate; the figure compares with that ceiling and promises nothing: go-back-N, which keeps
  the firmware free of a reorder buffer, loses a whole window per lost frame, far from the ceiling when
  a third of all frames are lost.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from benchmarks.common import Figure
from scalerunner.protocol.link import CONSOLE_CHUNK_MAX, Link
from scalerunner.protocol.linksim import Impairments, SimLine

BYTE_ERROR = 0.01
FRAME_OVERHEAD = 13  # wire bytes around c <= 243 payload bytes: header 6, port 1, CRC 4, COBS 1, 0x00 1


def ceiling(chunk: int, byte_error: float = BYTE_ERROR) -> float:
    """Best goodput of any ARQ without FEC, as a fraction of line rate, for chunks of ``chunk`` bytes."""
    wire = chunk + FRAME_OVERHEAD
    return chunk / wire * (1.0 - byte_error) ** wire


@dataclass(frozen=True)
class Case:
    name: str
    baud: int
    size: int  # payload bytes to move
    impairments: Impairments = field(default_factory=Impairments)
    chunk: int = CONSOLE_CHUNK_MAX
    window: int = 8
    target: float | None = None
    byte_error: bool = False  # compare with ceiling(chunk) rather than the line rate


CASES = (
    Case("115200 8N1 clean", 115_200, 60_000, target=0.90),
    Case("115200 8N1 1% of frames corrupted", 115_200, 100_000, Impairments(frame_corrupt=0.01), target=0.75),
    Case(
        "115200 8N1 1% of bytes corrupted",
        115_200,
        12_000,
        Impairments(corrupt=BYTE_ERROR),
        chunk=20,
        window=4,
        byte_error=True,
    ),
    Case("3000000 8N1 clean", 3_000_000, 1_000_000, target=0.90),
    Case(
        "3000000 8N1 1% of frames corrupted",
        3_000_000,
        1_000_000,
        Impairments(frame_corrupt=0.01),
        target=0.75,
    ),
    Case(
        "3000000 8N1 1% of bytes corrupted",
        3_000_000,
        60_000,
        Impairments(corrupt=BYTE_ERROR),
        chunk=40,
        window=8,
        byte_error=True,
    ),
)


async def measure(case: Case, seed: int = 1) -> tuple[float, int]:
    """Goodput in bytes per second, and the frames the sender retransmitted."""
    imp = case.impairments
    line = SimLine(case.baud, a_to_b=imp, b_to_a=imp, seed=seed)
    blob = random.Random(seed).randbytes(case.size)
    async with (
        Link(line.a, window=case.window, console_chunk=case.chunk, rng=random.Random(seed)) as a,
        Link(line.b, window=case.window, rng=random.Random(seed + 1)) as b,
    ):
        got = bytearray()

        async def read_all() -> None:
            while len(got) < len(blob):
                got.extend(await b.console.read())

        t0 = time.perf_counter()
        reader = asyncio.create_task(read_all())
        await a.console.write(blob)
        await reader
        elapsed = time.perf_counter() - t0
        await a.console.drain()
    if bytes(got) != blob:
        raise AssertionError(f"{case.name}: the console bytes arrived altered")
    return case.size / elapsed, a.stats.retransmits


def figure(case: Case, goodput: float, retransmits: int) -> Figure:
    line_rate = case.baud / 10
    of_line = goodput / line_rate
    measured = f"{goodput:,.0f} B/s = {of_line:.3f} of line rate ({retransmits} frames resent)"
    if case.byte_error:
        best = ceiling(case.chunk)
        name = f"console goodput {case.name}, chunk {case.chunk}, window {case.window}"
        against = (
            f"ceiling c/(c+13)*0.99^(c+13) = {best:.3f} of {line_rate:,.0f} B/s line rate (c={case.chunk})"
        )
        return Figure(name, measured.replace(",", " "), against.replace(",", " "), of_line / best)
    name = f"console goodput {case.name}"
    against = f"line rate {line_rate:,.0f} B/s".replace(",", " ")
    return Figure(name, measured.replace(",", " "), against, of_line, case.target)


def run() -> list[Figure]:
    figures = []
    for case in CASES:
        goodput, retransmits = asyncio.run(asyncio.wait_for(measure(case), timeout=30))
        figures.append(figure(case, goodput, retransmits))
    return figures
