"""A UART receiver over observed levels: 8N1, idle high, least significant bit first.

Pure: it reads a line's edges (``Trace.edges``) and samples each bit in its middle, as a UART
does after it sees the falling edge of a start bit. A stop bit that reads 0 is a framing error:
the byte is kept (a wrong baud rate shows as garbage plus framing errors, which is what a
person debugging it needs to see) and the receiver waits for the line to go idle again.
"""

from __future__ import annotations

from dataclasses import dataclass

from .trace import Level, level_at

__all__ = ["DecodedByte", "decode_uart", "encode_uart"]


@dataclass(frozen=True)
class DecodedByte:
    value: int
    start: float  # falling edge of the start bit
    end: float  # middle of the stop bit: when a receiver has the byte
    framing_error: bool


def decode_uart(edges: list[tuple[float, Level]], baud: float, end: float) -> list[DecodedByte]:
    bit = 1.0 / baud
    out: list[DecodedByte] = []
    i, ready_at = 1, 0.0  # ready_at: the receiver looks for a start bit only after this time
    while i < len(edges):
        t, value = edges[i]
        prev = edges[i - 1][1]
        i += 1
        if t < ready_at or value != 0 or prev != 1:
            continue
        stop_at = t + 9.5 * bit
        if stop_at > end:
            break  # the byte is cut off by the end of the observation
        byte = 0
        for n in range(8):
            if level_at(edges, t + (1.5 + n) * bit) == 1:
                byte |= 1 << n
        framing = level_at(edges, stop_at) != 1
        out.append(DecodedByte(byte, t, stop_at, framing))
        ready_at = stop_at
        if framing:  # wait for the line to return to idle before the next start bit
            while i < len(edges) and not (edges[i][0] >= stop_at and edges[i][1] == 1):
                i += 1
    return out


def encode_uart(data: bytes, baud: float, gaps: list[float] | None = None) -> list[tuple[float, int]]:
    """The edges a UART transmitter makes for ``data`` (idle before each byte: ``gaps`` seconds,
    one bit time when not given). For tests and the benchmark: the decoder's inverse."""
    bit = 1.0 / baud
    levels: list[tuple[float, int]] = [(0.0, 1)]
    t = 0.0
    for k, byte in enumerate(data):
        t += gaps[k] if gaps else bit
        frame = [0] + [(byte >> n) & 1 for n in range(8)] + [1]
        for n, b in enumerate(frame):
            if b != levels[-1][1]:
                levels.append((t + n * bit, b))
        t += 10 * bit
    return levels
