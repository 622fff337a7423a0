"""The HIL bench's sim back end: how fast a design runs in Icarus Verilog through it.

Two figures for the UART banner design on the iCEBreaker's 12 MHz clock (time_scale 1, so a
simulated second is a board second):
- board seconds simulated per wall second, against real time (the board itself: 1.0);
- the back end's observe() (vvp plus reading its $monitor lines into a trace) against a bare vvp
  of the same compiled testbench with its output thrown away, measured side by side: the cost of
  streaming and parsing the changes.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from benchmarks.common import Figure
from scalerunner.nodeagent.bench.checks import load_checks
from scalerunner.nodeagent.bench.hardware import load_bench
from scalerunner.nodeagent.bench.pins import BackendSetup
from scalerunner.nodeagent.bench.pins.sim import SimBackend

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "hardware" / "designs" / "uart_banner"
BOARD_SECONDS = 0.05  # 600 000 clocks, two and a half banners
ROUNDS = 3


def run() -> list[Figure]:
    bench = load_bench()
    board = bench.boards["icebreaker"]
    cf = load_checks(DESIGN / "checks.toml")
    sim = SimBackend(BackendSetup(board, bench.resolve(board), DESIGN / "uart_banner.v", cf))
    sim.start()
    try:
        assert sim._dir is not None  # the compiled testbench: the bare run reuses it
        vvp = ["vvp", "-n", str(sim._dir / "sim.vvp"), f"+duration={round(BOARD_SECONDS * 1e12)}"]
        ours, bare, changes = [], [], 0
        for _ in range(ROUNDS):  # side by side, so load on the shared machine hits both alike
            t0 = time.perf_counter()
            trace = sim.observe(["uart_tx"], BOARD_SECONDS, [])
            ours.append(time.perf_counter() - t0)
            changes = len(trace.changes)
            t0 = time.perf_counter()
            subprocess.run(vvp, stdout=subprocess.DEVNULL, check=True)
            bare.append(time.perf_counter() - t0)
    finally:
        sim.stop()
    best, best_bare = min(ours), min(bare)
    return [
        Figure(
            "sim back end: UART banner design at 12 MHz",
            f"{BOARD_SECONDS / best:.3f} board s per wall s ({changes} edges in {BOARD_SECONDS * 1e3:g} ms)",
            "real time on the board (1 board s per s)",
            BOARD_SECONDS / best,
        ),
        Figure(
            "sim back end: observe() against bare vvp",
            f"{best:.3f} s",
            f"vvp alone, output discarded: {best_bare:.3f} s",
            best_bare / best,
        ),
    ]
