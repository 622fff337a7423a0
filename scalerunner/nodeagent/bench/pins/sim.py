"""The ``sim`` pin back end: the design's Verilog in Icarus Verilog, with a generated testbench.

The testbench plays the bench: it clocks the design's clock port at the board's frequency,
drives the design's inputs from a schedule file (one ``time_ps index value`` line per drive,
read with ``$fscanf``) and prints a line per simulated time step in which a watched signal
changes (``$monitor``: ``time_ps v0 v1 ...``). The back end reads those lines from vvp's
stdout as they come. The design is compiled once in start(); each observe() is a fresh run
from power-up, as a freshly programmed FPGA is.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from ..checks import LoopbackCheck
from ..errors import BenchFault
from ..trace import Change, Drive, Level, Trace
from .base import BackendSetup

__all__ = ["SimBackend", "testbench"]

TB = "scalerunner_tb"


def _param(value: int | str) -> str:
    return str(value) if isinstance(value, int) else '"' + value.replace('"', '\\"') + '"'


def testbench(
    top: str,
    clock_port: str,
    clock_hz: float,
    outputs: Sequence[str],
    inputs: Sequence[str],
    parameters: dict[str, int | str],
) -> str:
    """The Verilog testbench around ``top`` (pure, so tests can read it)."""
    half_ps = max(1, round(1e12 / clock_hz / 2))
    params = ", ".join(f".{k}({_param(v)})" for k, v in parameters.items())
    ports = ", ".join(f".{s}({s})" for s in (clock_port, *inputs, *outputs))
    watched = [*outputs, *inputs]
    fmt = "%0t" + " %b" * len(watched)
    cases = "".join(f"        {i}: {s} = val[0];\n" for i, s in enumerate(inputs))
    lines = [
        "`timescale 1ps/1ps",
        f"module {TB};",
        f"  reg {clock_port} = 0;",
        f"  always #{half_ps} {clock_port} = ~{clock_port};",
        *(f"  reg {s} = 0;" for s in inputs),
        *(f"  wire {s};" for s in outputs),
        f"  {top} {'#(' + params + ') ' if params else ''}dut ({ports});",
        "  reg [8*4096-1:0] path;",
        "  reg [63:0] dur, t;",
        "  integer fd, idx, val, r;",
        f'  initial $monitor("{fmt}", $time, {", ".join(watched)});',
        "  initial begin",
        '    if (!$value$plusargs("duration=%d", dur)) dur = 1000000;',
        "    #(dur) $finish(0);",
        "  end",
        "  initial begin",
        '    if ($value$plusargs("drives=%s", path)) begin',
        '      fd = $fopen(path, "r");',
        '      r = $fscanf(fd, "%d %d %d\\n", t, idx, val);',
        "      while (r == 3) begin",
        "        if (t > $time) #(t - $time);",
        "        case (idx)",
        cases.rstrip("\n") if cases else "        default: ;",
        "        endcase",
        '        r = $fscanf(fd, "%d %d %d\\n", t, idx, val);',
        "      end",
        "    end",
        "  end",
        "endmodule",
        "",
    ]
    return "\n".join(lines)


def _level(ch: str) -> Level:
    return 1 if ch == "1" else 0 if ch == "0" else None


class SimBackend:
    needs_programming = False

    def __init__(self, setup: BackendSetup, wall_timeout: float = 60.0) -> None:
        spec = setup.checks.sim
        if spec is None:
            raise BenchFault(setup.board.name, "no_sim", f"{setup.checks.path} has no [sim] table")
        self._setup = setup
        self._spec = spec
        self._wall = wall_timeout
        used = {s for c in setup.checks.checks for s in setup.checks.signals(c)}
        for c in setup.checks.checks:  # a loopback's read side is watched like any output
            if isinstance(c, LoopbackCheck):
                used.add(c.read)
        self._outputs = sorted(s for s in used if setup.signals[s].direction == "out")
        self._inputs = sorted(s for s in used if setup.signals[s].direction == "in")
        self._dir: Path | None = None

    @property
    def _board(self) -> str:
        return self._setup.board.name

    def start(self) -> None:
        design = self._setup.design
        if not design.is_file():
            raise BenchFault(self._board, "design_missing", f"{design}: no such file")
        base = Path(self._setup.checks.path).parent
        sources = [design, *(base / s for s in self._spec.sources)]
        for s in sources:
            if not s.is_file():
                raise BenchFault(self._board, "design_missing", f"{s}: no such file")
        self._dir = Path(tempfile.mkdtemp(prefix="scalerunner-sim-"))
        tb = self._dir / "tb.v"
        board = self._setup.board
        tb.write_text(
            testbench(
                self._spec.top or design.stem,
                board.clock.port,
                board.clock.hz,
                self._outputs,
                self._inputs,
                self._spec.parameters,
            )
        )
        cmd = ["iverilog", "-g2012", "-s", TB, "-o", str(self._dir / "sim.vvp"), str(tb), *map(str, sources)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=self._wall, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.stop()
            raise BenchFault(self._board, "sim_build", f"iverilog: {exc}") from exc
        if done.returncode != 0:
            self.stop()  # a failed start leaves nothing behind: the caller only stops what started
            raise BenchFault(self._board, "sim_build", f"iverilog of {design}: {done.stderr.strip()[-2000:]}")

    def stop(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def observe(self, signals: Sequence[str], duration: float, drives: Sequence[Drive]) -> Trace:
        assert self._dir is not None, "observe() before start()"
        scale = self._spec.time_scale
        ps_per_board_s = 1e12 / scale
        index = {s: i for i, s in enumerate(self._inputs)}
        sched = self._dir / "drives.txt"
        sched.write_text(
            "".join(
                f"{round(d.t * ps_per_board_s)} {index[d.signal]} {d.value}\n"
                for d in sorted(drives, key=lambda d: d.t)
            )
        )
        dur_ps = max(1, round(duration * ps_per_board_s))
        cmd = ["vvp", "-n", str(self._dir / "sim.vvp"), f"+duration={dur_ps}", f"+drives={sched}"]
        watched = [*self._outputs, *self._inputs]
        trace: Trace | None = None
        last: dict[str, Level] = {}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        timer = threading.Timer(self._wall, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                parts = line.split()
                if len(parts) != len(watched) + 1 or not parts[0].isdigit():
                    continue  # vvp's own chatter
                t = int(parts[0]) / ps_per_board_s
                levels = {s: _level(v) for s, v in zip(watched, parts[1:], strict=True)}
                if trace is None:
                    trace, last = Trace(initial=levels), dict(levels)
                    continue
                for s, v in levels.items():
                    if last[s] != v:
                        trace.changes.append(Change(t, s, v))
                        last[s] = v
            proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if trace is None:
            err = proc.stderr.read().strip()[-500:] if proc.stderr else ""
            raise BenchFault(
                self._board, "no_observation", f"vvp printed nothing (exit {proc.returncode}) {err}"
            )
        if proc.returncode != 0:
            raise BenchFault(self._board, "sim_run", f"vvp exited {proc.returncode} after {trace.end:g} s")
        trace.end = duration
        return trace
