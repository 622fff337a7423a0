"""The checks file: what a design must do on the bench, declared next to its bitstream.

One TOML file, ``[[checks]]`` tables each with a ``kind`` (uart, frequency, pattern, loopback),
a ``name`` and a ``timeout`` (seconds of board time the check may watch). An optional ``[sim]``
table says how the sim back end builds the design from Verilog. docs/bench.md lists every key.
Loading validates the file alone; ``check_against(board)`` checks the signals a board has.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from .errors import BenchConfigError, decode_toml
from .hardware import Board

__all__ = [
    "Check",
    "ChecksFile",
    "FrequencyCheck",
    "LoopbackCheck",
    "PatternCheck",
    "SimSpec",
    "UartCheck",
    "load_checks",
]

SignalName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}\Z")]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
Fraction = Annotated[float, msgspec.Meta(gt=0, lt=1)]


class _Check(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="kind"):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    timeout: Seconds


class UartCheck(_Check, frozen=True, kw_only=True, tag="uart"):
    """``signal`` carries 8N1 at ``baud``; ``expect`` (text) or ``regex`` appears within the timeout."""

    signal: SignalName
    baud: Annotated[float, msgspec.Meta(ge=50, le=20e6)]
    expect: str = ""
    regex: str = ""


class FrequencyCheck(_Check, frozen=True, kw_only=True, tag="frequency"):
    """``signal`` toggles at ``hz`` within ``tolerance`` (a fraction: 0.02 is ±2 %)."""

    signal: SignalName
    hz: Annotated[float, msgspec.Meta(gt=0)]
    tolerance: Fraction = 0.02
    min_periods: Annotated[int, msgspec.Meta(ge=1)] = 3


class PatternCheck(_Check, frozen=True, kw_only=True, tag="pattern"):
    """``signals`` (most significant first) count up in binary, or walk ``sequence`` (values of
    the group as integers), for ``min_steps`` steps in a row. Changes each within ``settle``
    seconds of the one before are one step (a group's lines never change at the same instant)."""

    signals: Annotated[tuple[SignalName, ...], msgspec.Meta(min_length=1, max_length=32)]
    mode: Literal["binary", "sequence"] = "binary"
    sequence: tuple[int, ...] = ()
    min_steps: Annotated[int, msgspec.Meta(ge=1)] = 8
    settle: Annotated[float, msgspec.Meta(ge=0)] = 50e-6


class LoopbackCheck(_Check, frozen=True, kw_only=True, tag="loopback"):
    """The node drives ``drive`` through ``values``, each for ``hold`` seconds; ``read`` must
    follow within ``max_delay``."""

    drive: SignalName
    read: SignalName
    values: Annotated[tuple[Literal[0, 1], ...], msgspec.Meta(min_length=1)] = (1, 0, 1, 0)
    hold: Seconds = 0.01
    max_delay: Seconds = 0.001


Check = UartCheck | FrequencyCheck | PatternCheck | LoopbackCheck


class SimSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the sim back end builds the design: the bitstream argument is the top Verilog file."""

    top: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*\Z")] | None = (
        None  # default: file stem
    )
    sources: tuple[str, ...] = ()  # more Verilog files, relative to the checks file
    parameters: dict[str, int | str] = {}  # Verilog parameters of the top module
    # One simulated second is time_scale board seconds: a design whose prescaler is cut by k
    # bits for the simulation (parameters) runs 2**k times faster, and checks keep the board's
    # frequencies and timeouts.
    time_scale: Annotated[float, msgspec.Meta(ge=1)] = 1.0


class ChecksFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    checks: Annotated[tuple[Check, ...], msgspec.Meta(min_length=1)]
    sim: SimSpec | None = None
    path: str = ""  # filled in by load_checks

    def signals(self, check: Check) -> tuple[str, ...]:
        """The board signals ``check`` watches or drives."""
        if isinstance(check, UartCheck | FrequencyCheck):
            return (check.signal,)
        if isinstance(check, PatternCheck):
            return check.signals
        return (check.drive, check.read)


def load_checks(path: Path) -> ChecksFile:
    cf = decode_toml(path, ChecksFile)
    names: dict[str, int] = {}
    for i, c in enumerate(cf.checks):
        key = f"checks[{i}]"
        if c.name in names:
            raise BenchConfigError(path, f"{key}.name", f"{c.name!r} is also checks[{names[c.name]}]")
        names[c.name] = i
        if isinstance(c, UartCheck):
            if bool(c.expect) == bool(c.regex):
                raise BenchConfigError(path, key, "a uart check needs exactly one of expect and regex")
            if c.regex:
                try:
                    re.compile(c.regex)
                except re.error as exc:
                    raise BenchConfigError(path, f"{key}.regex", f"not a regular expression: {exc}") from exc
        if isinstance(c, PatternCheck):
            if c.mode == "sequence" and len(c.sequence) < 2:
                raise BenchConfigError(path, f"{key}.sequence", "a sequence pattern needs two values or more")
            if c.mode == "binary" and c.sequence:
                raise BenchConfigError(path, f"{key}.sequence", "only a sequence pattern takes a sequence")
            limit = 1 << len(c.signals)
            for j, v in enumerate(c.sequence):
                if not 0 <= v < limit:
                    raise BenchConfigError(
                        path, f"{key}.sequence[{j}]", f"{v} does not fit {len(c.signals)} signals"
                    )
        if isinstance(c, LoopbackCheck) and len(c.values) * c.hold > c.timeout:
            raise BenchConfigError(path, f"{key}.timeout", "shorter than len(values) * hold")
    return msgspec.structs.replace(cf, path=str(path))


def check_against(cf: ChecksFile, board: Board) -> None:
    """Every signal a check names exists on ``board`` in the right direction."""
    for i, c in enumerate(cf.checks):
        for sig in cf.signals(c):
            s = board.signal(sig)
            if s is None:
                known = ", ".join(x.name for x in board.signals)
                raise BenchConfigError(
                    cf.path, f"checks[{i}]", f"board {board.name} has no {sig!r} ({known})"
                )
            wants = "in" if isinstance(c, LoopbackCheck) and sig == c.drive else "out"
            if s.direction != wants:
                raise BenchConfigError(
                    cf.path,
                    f"checks[{i}]",
                    f"signal {sig!r} of board {board.name} is {s.direction!r}, this check needs {wants!r}",
                )
