"""The checks' verdicts: pure functions of a check and the trace observed for it.

Each says, on failure, what was expected and what was seen, in the board's units.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from .checks import Check, FrequencyCheck, LoopbackCheck, PatternCheck, UartCheck
from .trace import Drive, Level, Trace, level_at
from .uart import decode_uart

__all__ = ["Verdict", "estimate_frequency", "evaluate", "loopback_drives", "pattern_steps"]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str


def _hz(f: float) -> str:
    for unit, scale in (("MHz", 1e6), ("kHz", 1e3)):
        if f >= scale:
            return f"{f / scale:.4g} {unit}"
    return f"{f:.4g} Hz"


def _s(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale:
            return f"{t / scale:.4g} {unit}"
    return f"{t * 1e9:.4g} ns"


def estimate_frequency(edges: list[tuple[float, Level]], until: float) -> tuple[float, int] | None:
    """(frequency, full periods) from the rising edges before ``until``; None under one period."""
    rises = [t for (t, v), (_, p) in zip(edges[1:], edges, strict=False) if v == 1 and p == 0 and t <= until]
    if len(rises) < 2:
        return None
    periods = len(rises) - 1
    return periods / (rises[-1] - rises[0]), periods


def _frequency(c: FrequencyCheck, trace: Trace) -> Verdict:
    edges = trace.edges(c.signal)
    until = min(c.timeout, trace.end)
    want = f"{c.signal} toggling at {_hz(c.hz)} ± {c.tolerance:.0%}"
    got = estimate_frequency(edges, until)
    if got is None or got[1] < c.min_periods:
        n = len(edges) - 1
        return Verdict(
            False, f"expected {want}; saw {n} change(s) in {_s(until)}, under {c.min_periods} periods"
        )
    f, periods = got
    if abs(f - c.hz) <= c.tolerance * c.hz:
        return Verdict(True, f"{c.signal} at {_hz(f)} over {periods} periods")
    return Verdict(False, f"expected {want}; saw {_hz(f)} ({f / c.hz - 1:+.1%}) over {periods} periods")


def pattern_steps(
    trace: Trace, signals: tuple[str, ...], settle: float, until: float
) -> list[tuple[float, int | None]]:
    """The group's value (first signal most significant) after each settled change."""
    group = set(signals)
    state: dict[str, Level] = {s: trace.initial.get(s) for s in signals}

    def value() -> int | None:
        bits = [state[s] for s in signals]
        if any(b is None for b in bits):
            return None
        return int("".join(str(b) for b in bits), 2)

    steps: list[tuple[float, int | None]] = [(0.0, value())]
    first: float | None = None  # the first change of the step being gathered
    last = 0.0  # its latest change: a change within settle of it joins the step
    for ch in trace.changes:
        if ch.signal not in group or ch.t > until:
            continue
        if first is not None and ch.t - last > settle:
            steps.append((first, value()))
            first = None
        if first is None:
            first = ch.t
        last = ch.t
        state[ch.signal] = ch.value
    if first is not None:
        steps.append((first, value()))
    # consecutive equal values (a glitch that settled back) are one step
    return [s for i, s in enumerate(steps) if i == 0 or s[1] != steps[i - 1][1]]


def _pattern(c: PatternCheck, trace: Trace) -> Verdict:
    width = len(c.signals)
    until = min(c.timeout, trace.end)
    steps = [(t, v) for t, v in pattern_steps(trace, c.signals, c.settle, until) if v is not None]
    names = "".join(f"{s} " for s in c.signals).strip()

    def bits(v: int) -> str:
        return format(v, f"0{width}b")

    def following(v: int) -> int | None:
        if c.mode == "binary":
            return (v + 1) % (1 << width)
        seq = c.sequence
        return seq[(seq.index(v) + 1) % len(seq)] if v in seq else None

    what = "count up in binary" if c.mode == "binary" else "walk " + ", ".join(bits(v) for v in c.sequence)
    run = 0
    for (t0, v0), (t1, v1) in itertools.pairwise(steps):
        nxt = following(v0)
        if nxt is not None and v1 == nxt:
            run += 1
            if run >= c.min_steps:
                return Verdict(True, f"{names} made {run} steps in order by {_s(t1)}")
            continue
        if nxt is None:
            if run or t0 > 0:
                return Verdict(False, f"expected {names} to {what}; saw {bits(v0)} at {_s(t0)}, not in it")
            continue  # the design may start anywhere: wait for a value of the sequence
        return Verdict(
            False, f"expected {names} to {what}: {bits(nxt)} after {bits(v0)}; saw {bits(v1)} at {_s(t1)}"
        )
    return Verdict(
        False, f"expected {names} to {what} for {c.min_steps} steps; saw {run} step(s) in {_s(until)}"
    )


def _uart(c: UartCheck, trace: Trace) -> Verdict:
    until = min(c.timeout, trace.end)
    decoded = decode_uart(trace.edges(c.signal), c.baud, until)
    text = bytes(b.value for b in decoded).decode("latin-1")
    errors = sum(b.framing_error for b in decoded)
    want = repr(c.expect) if c.expect else f"/{c.regex}/"
    m = re.search(c.regex, text) if c.regex else None
    found = text.find(c.expect) if c.expect else -1
    if m is not None or found >= 0:
        last = (m.end() if m is not None else found + len(c.expect)) - 1
        return Verdict(True, f"{want} on {c.signal} by {_s(decoded[max(last, 0)].end)}")
    seen = ascii(text[-120:]) if text else "nothing"
    tail = f" ({errors} framing error(s))" if errors else ""
    return Verdict(
        False, f"expected {want} on {c.signal} at {c.baud:g} baud within {_s(c.timeout)}; saw {seen}{tail}"
    )


def loopback_drives(c: LoopbackCheck) -> list[Drive]:
    return [Drive(i * c.hold, c.drive, v) for i, v in enumerate(c.values)]


def _loopback(c: LoopbackCheck, trace: Trace) -> Verdict:
    edges = trace.edges(c.read)
    driven = trace.edges(c.drive)  # when the back end really set it, if it reports that
    for d in loopback_drives(c):
        when = next((t for t, v in driven if t >= d.t and v == d.value), d.t) if len(driven) > 1 else d.t
        at = when + c.max_delay
        seen = level_at(edges, at)
        if seen != d.value:
            shown = "x" if seen is None else seen
            return Verdict(
                False,
                f"drove {c.drive}={d.value} at {_s(d.t) if d.t else '0 s'}: expected {c.read}={d.value} "
                f"within {_s(c.max_delay)}; saw {c.read}={shown}",
            )
    return Verdict(True, f"{c.read} followed {c.drive} through {len(c.values)} values")


def evaluate(check: Check, trace: Trace) -> Verdict:
    if isinstance(check, UartCheck):
        return _uart(check, trace)
    if isinstance(check, FrequencyCheck):
        return _frequency(check, trace)
    if isinstance(check, PatternCheck):
        return _pattern(check, trace)
    return _loopback(check, trace)
