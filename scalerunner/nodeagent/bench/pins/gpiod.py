"""The ``gpiod`` pin back end: the node's own GPIO lines, through libgpiod v2 (PyPI ``gpiod``).

The design's outputs are requested as inputs with edge detection on both edges; the kernel
timestamps each edge (CLOCK_MONOTONIC), so the trace's times do not depend on how fast this
loop runs. The design's inputs are requested as outputs, driven at the schedule's times.
Runs only on a node with the board wired to its expansion connector; ``gpiod`` is imported
on start(), so the rest of the bench works without it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import BenchFault
from ..trace import Change, Drive, Trace
from .base import BackendSetup

if TYPE_CHECKING:
    import gpiod as _gpiod

__all__ = ["GpiodBackend"]


class GpiodBackend:
    needs_programming = True

    def __init__(self, setup: BackendSetup, consumer: str = "scalerunner-bench") -> None:
        self._setup = setup
        self._consumer = consumer
        self._requests: dict[str, _gpiod.LineRequest] = {}  # per chip
        self._gpiod: Any = None

    def start(self) -> None:
        try:
            import gpiod
        except ImportError as exc:
            raise BenchFault(
                self._setup.board.name, "no_gpiod", "the gpiod package is not installed"
            ) from exc
        self._gpiod = gpiod
        Direction, Edge, Value = gpiod.line.Direction, gpiod.line.Edge, gpiod.line.Value
        by_chip: dict[str, dict[Any, gpiod.LineSettings | None]] = {}
        for s in self._setup.signals.values():
            settings = (
                gpiod.LineSettings(direction=Direction.INPUT, edge_detection=Edge.BOTH)
                if s.direction == "out"
                else gpiod.LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE)
            )
            by_chip.setdefault(s.chip, {})[s.line] = settings
        try:
            for chip, config in by_chip.items():
                self._requests[chip] = gpiod.request_lines(
                    f"/dev/{chip}", consumer=self._consumer, config=config
                )
        except OSError as exc:
            self.stop()
            raise BenchFault(self._setup.board.name, "gpio", f"/dev/{chip}: {exc.strerror or exc}") from exc

    def stop(self) -> None:
        for req in self._requests.values():
            req.release()
        self._requests.clear()

    def observe(self, signals: Sequence[str], duration: float, drives: Sequence[Drive]) -> Trace:
        gpiod = self._gpiod
        sig = self._setup.signals
        by_line = {(s.chip, s.line): s.name for s in sig.values()}
        watched = [sig[n] for n in signals if sig[n].direction == "out"]
        initial = {
            s.name: int(self._requests[s.chip].get_value(s.line) == gpiod.line.Value.ACTIVE) for s in watched
        }
        for name in {d.signal for d in drives}:  # every observation starts with the inputs low
            self._requests[sig[name].chip].set_value(sig[name].line, gpiod.line.Value.INACTIVE)
            initial[name] = 0
        trace = Trace(initial=dict(initial))
        pending = sorted(drives, key=lambda d: d.t)
        t0 = time.monotonic_ns()
        while True:
            now = (time.monotonic_ns() - t0) / 1e9
            while pending and pending[0].t <= now:
                d = pending.pop(0)
                s = sig[d.signal]
                self._requests[s.chip].set_value(s.line, gpiod.line.Value(d.value))
                # when it really happened: the loopback check counts its delay from here
                trace.changes.append(Change((time.monotonic_ns() - t0) / 1e9, d.signal, d.value))
            if now >= duration:
                break
            wait = min(duration, pending[0].t if pending else duration) - now
            for chip, req in self._requests.items():
                if req.wait_edge_events(max(wait, 0) / max(len(self._requests), 1)):
                    for ev in req.read_edge_events():
                        seen = by_line.get((chip, ev.line_offset))
                        if seen is not None and seen in initial:
                            up = ev.event_type == ev.Type.RISING_EDGE
                            trace.changes.append(Change((ev.timestamp_ns - t0) / 1e9, seen, int(up)))
        trace.changes.sort()
        trace.end = duration
        return trace
