"""The gpiod back end's loop against a stand-in GPIO chip.

This machine has no GPIO chip (no /dev/gpiochip*, no gpio-sim: no configfs, no modules), so only
``gpiod.request_lines`` is replaced: the back end still builds real ``gpiod.LineSettings`` and reads
real ``gpiod.EdgeEvent`` objects. The stand-in is a board wired for the counter/loopback designs:
led0 (line 17) toggles at 50 Hz, loop_out (line 25) echoes loop_in (line 24) 200 µs later.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import gpiod
import pytest
from gpiod.line import Direction, Edge, Value

from scalerunner.nodeagent.bench.checks import load_checks
from scalerunner.nodeagent.bench.hardware import load_bench
from scalerunner.nodeagent.bench.pins import BackendSetup
from scalerunner.nodeagent.bench.pins.gpiod import GpiodBackend
from scalerunner.nodeagent.bench.runner import run_checks

LED0, LOOP_IN, LOOP_OUT = 17, 24, 25
HALF_PERIOD_NS = 10_000_000  # 50 Hz
ECHO_NS = 200_000


class StandInChip:
    """What the kernel's line request does for the lines the back end asks for."""

    def __init__(self, config: dict[object, gpiod.LineSettings | None], echo: bool) -> None:
        self.config = config
        self.echo = echo
        self.t0 = time.monotonic_ns()
        self.levels = {LED0: 0, LOOP_IN: 0, LOOP_OUT: 0}
        self.pending: list[tuple[int, int, int]] = []  # (time ns, line, level)
        self.released = False
        self._next_led = self.t0 + HALF_PERIOD_NS

    def _advance(self, now: int) -> list[gpiod.EdgeEvent]:
        while self._next_led <= now:
            self.pending.append((self._next_led, LED0, 1 - self.levels[LED0]))
            self.levels[LED0] ^= 1  # the pending list carries the level each edge sets
            self._next_led += HALF_PERIOD_NS
        due = sorted(e for e in self.pending if e[0] <= now)
        self.pending = [e for e in self.pending if e[0] > now]
        out = []
        for seq, (t, line, level) in enumerate(due):
            self.levels[line] = level
            kind = gpiod.EdgeEvent.Type.RISING_EDGE if level else gpiod.EdgeEvent.Type.FALLING_EDGE
            if self._watched(line):
                out.append(gpiod.EdgeEvent(kind.value, t, line, seq, seq))
        return out

    def _watched(self, line: int) -> bool:
        s = self.config.get(line)
        return s is not None and s.edge_detection is Edge.BOTH

    def get_value(self, line: int) -> Value:
        return Value.ACTIVE if self.levels[line] else Value.INACTIVE

    def set_value(self, line: int, value: Value) -> None:
        settings = self.config.get(line)
        assert settings is not None and settings.direction is Direction.OUTPUT, (
            f"line {line} is not an output"
        )
        self.levels[line] = int(value == Value.ACTIVE)
        if self.echo and line == LOOP_IN:
            self.pending.append((time.monotonic_ns() + ECHO_NS, LOOP_OUT, self.levels[line]))

    def wait_edge_events(self, timeout: timedelta | float | None = None) -> bool:
        assert isinstance(timeout, float)
        deadline = time.monotonic_ns() + int(timeout * 1e9)
        nxt = min([self._next_led, *(t for t, _, _ in self.pending)])
        time.sleep(max(0, min(nxt, deadline) - time.monotonic_ns()) / 1e9)
        return nxt <= time.monotonic_ns()

    def read_edge_events(self) -> list[gpiod.EdgeEvent]:
        return self._advance(time.monotonic_ns())

    def release(self) -> None:
        self.released = True


CHECKS = """
[[checks]]
name = "led0 at 50 Hz"
kind = "frequency"
signal = "led0"
hz = 50
tolerance = 0.05
timeout = 0.2

[[checks]]
name = "loopback"
kind = "loopback"
drive = "loop_in"
read = "loop_out"
hold = 0.01
max_delay = 0.002
timeout = 0.05
"""


@pytest.mark.parametrize("echo", [True, False])
def test_gpiod_backend_watches_edges_and_drives_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, echo: bool
) -> None:
    chips: list[tuple[str, StandInChip]] = []

    def request_lines(
        path: str, config: dict[object, gpiod.LineSettings | None], consumer: str
    ) -> StandInChip:
        chip = StandInChip(config, echo)
        chips.append((path, chip))
        return chip

    monkeypatch.setattr(gpiod, "request_lines", request_lines)
    bench = load_bench()
    board = bench.boards["arty_a7_35t"]
    (tmp_path / "checks.toml").write_text(CHECKS)
    cf = load_checks(tmp_path / "checks.toml")
    backend = GpiodBackend(BackendSetup(board, bench.resolve(board), tmp_path / "x.bit", cf))
    backend.start()
    try:
        ((path, chip),) = chips
        assert path == "/dev/gpiochip0"
        assert chip.config[LOOP_IN] is not None and chip.config[LOOP_IN].direction is Direction.OUTPUT
        results = run_checks(backend, cf)
    finally:
        backend.stop()
    assert chip.released
    freq, loop = results
    assert freq.passed, freq.message
    assert loop.passed is echo, loop.message
    if not echo:
        assert loop.message == "drove loop_in=1 at 0 s: expected loop_out=1 within 2 ms; saw loop_out=0"
