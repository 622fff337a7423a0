"""The one interface every pin back end implements, and what a back end is built from.

A back end sees the board's expansion-connector signals: it watches the design's outputs and
drives its inputs on a schedule, for a stretch of board time, and returns what it saw. It
does not judge; ``evaluate`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..checks import ChecksFile
from ..hardware import Board, ResolvedSignal
from ..trace import Drive, Trace

__all__ = ["BackendSetup", "PinBackend"]


@dataclass(frozen=True)
class BackendSetup:
    board: Board
    signals: dict[str, ResolvedSignal]  # the board's signals with their node GPIO lines
    design: Path  # the bitstream (gpiod) or the top Verilog file (sim)
    checks: ChecksFile


class PinBackend(Protocol):
    # True when the design must be put on a real FPGA with openFPGALoader before start()
    needs_programming: bool

    def start(self) -> None:
        """Take the lines (or build the simulation); a failure is a BenchFault."""

    def stop(self) -> None:
        """Release everything start() took; safe to call twice."""

    def observe(self, signals: Sequence[str], duration: float, drives: Sequence[Drive]) -> Trace:
        """Watch ``signals`` (the design's outputs) for ``duration`` board seconds while applying
        ``drives`` (to its inputs). A BenchFault when nothing at all could be observed."""
        ...
