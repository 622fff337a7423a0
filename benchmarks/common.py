"""What a benchmark reports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    name: str  # what was measured, e.g. "console goodput 115200 8N1 clean"
    measured: str  # the raw figure with its unit, e.g. "10 450 B/s"
    against: str  # the peer or limit it is compared with, e.g. "line rate 11 520 B/s"
    ratio: float  # measured / against
    target: float | None = None  # the ratio we promise, if any
