"""The BMC firmware under the real MicroPython unix port.

First its pure modules (bmc/power.py, eventlog.py, sensors.py, console.py): each test runs a short script
that drives a module with a clock and inputs of its choosing and prints what came out as JSON lines, which
the test checks exactly. These are fast.

Then the firmware itself (bmc/main.py, unchanged) on ptys, driven from the host with
``scalerunner.protocol.link.Link`` (marked slow). A second pty is the node's UART: the test types into it as
the node would and reads what the host sent to the node.

(One module: a tests/test_bmcfw.py beside this file would clash with it at collection, both being imported
as the top-level module ``test_bmcfw``.)"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import select
import subprocess
import textwrap
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scalerunner.firmware import micropypath
from scalerunner.protocol import (
    DeviceKind,
    ErrorCode,
    EventLevel,
    Frame,
    Message,
    MsgType,
    PowerState,
    encode_frame,
)
from scalerunner.protocol.link import Link
from scalerunner.protocol.link.streams import FdStream
from tests.mpy_support import micropython_binary, recv_type, require_tool

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(60)]
slow = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "bmc" / "main.py"
MICROPYPATH = micropypath(REPO / "bmc")
STEP = 5.0  # seconds any single exchange may take
MIN_OFF_MS = 300
# event codes (bmc/README.md)
EV_POWER, EV_RESET, EV_REFUSED, EV_DEFERRED = 0x0110, 0x0112, 0x0114, 0x0116
EV_CONSOLE_DROP, EV_CONSOLE_UNACKED, EV_LINK_DROPS = 0x0120, 0x0124, 0x0200


# --- the pure modules ------------------------------------------------------------------------------

PRELUDE = """
import json
import power
from power import *

def out(*v):
    print(json.dumps(v))

def step(p, now, action=NO_ACTION, rail=0):
    pins, events = p.step(now, action, rail)
    out(STATE_NAMES[p.state], [list(x) for x in pins], [e[1] for e in events])
    return events
"""

RAIL_PIN, RESET_PIN, BUTTON_PIN, BOOT_PIN = 0, 1, 2, 3


def run_mpy(tmp_path: Path, code: str) -> list[Any]:
    script = tmp_path / "driver.py"
    script.write_text(PRELUDE + textwrap.dedent(code))
    proc = subprocess.run(
        [micropython_binary(), str(script)],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "MICROPYPATH": MICROPYPATH},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


# --- power -----------------------------------------------------------------------------------------


def test_power_on_enables_the_rail_holds_reset_and_is_on_once_the_rail_is_good(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        p = Power(Config(rail_timeout_ms=500))
        p.select_boot_mode(1)
        step(p, 0, A_ON, 0)
        step(p, 10, rail=2500)
        step(p, 30, rail=5080)
        step(p, 40, A_ON, 5080)
    """,
    )
    assert out == [
        ["STARTING", [[BOOT_PIN, 1], [RESET_PIN, 1], [RAIL_PIN, 1]], [EV_POWER]],
        ["STARTING", [], []],
        ["ON", [[RESET_PIN, 0]], [EV_POWER]],
        ["ON", [], []],  # ON when on: nothing to do
    ]


def test_a_rail_that_never_comes_good_is_a_latched_fault(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        p = Power(Config(rail_timeout_ms=500))
        step(p, 0, A_ON, 0)
        step(p, 499, rail=3000)
        ev = step(p, 500, rail=3000)
        out(ev[0][0], ev[0][2], p.fault)
        step(p, 600, A_ON, 0)
        step(p, 700, A_OFF, 0)
        step(p, 800, A_ON, 0)
    """,
    )
    assert out[:3] == [
        ["STARTING", [[RESET_PIN, 1], [RAIL_PIN, 1]], [EV_POWER]],
        ["STARTING", [], []],
        ["FAULT", [[RAIL_PIN, 0], [RESET_PIN, 0]], [EV_POWER]],
    ]
    level, text, fault = out[3]
    assert fault == "rail 3000 mV, not good within 500 ms"
    assert level == 3 and text == "STARTING -> FAULT: " + fault
    assert out[4] == ["FAULT", [], [EV_REFUSED]]  # latched: ON does not clear it
    assert out[5] == ["OFF", [], [EV_POWER]]  # OFF does
    assert out[6] == ["OFF", [], [EV_DEFERRED]]  # and the minimum off time counts from there


def test_a_brown_out_while_on_cuts_the_rail_and_faults(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        p = Power()
        step(p, 0, A_ON, 0)
        step(p, 20, rail=5080)
        step(p, 5000, rail=4000)
        out(p.fault)
    """,
    )
    assert out[2] == ["FAULT", [[RAIL_PIN, 0]], [EV_POWER]]
    assert out[3] == ["brown-out: rail 4000 mV"]


def test_an_on_too_soon_after_off_waits_for_the_minimum_off_time(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        p = Power(Config(min_off_ms=1000, off_mv=500))
        step(p, 0, A_ON, 0)
        step(p, 20, rail=5080)
        step(p, 100, A_OFF, 5080)
        step(p, 110, rail=2000)
        step(p, 120, rail=100)
        step(p, 500, A_ON, 0)
        step(p, 1119, rail=0)
        step(p, 1120, rail=0)
    """,
    )
    assert out == [
        ["STARTING", [[RESET_PIN, 1], [RAIL_PIN, 1]], [EV_POWER]],
        ["ON", [[RESET_PIN, 0]], [EV_POWER]],
        ["STOPPING", [[RAIL_PIN, 0]], [EV_POWER]],
        ["STOPPING", [], []],
        ["OFF", [], [EV_POWER]],  # off since 120
        ["OFF", [], [EV_DEFERRED]],  # not dropped: deferred
        ["OFF", [], []],
        ["STARTING", [[RESET_PIN, 1], [RAIL_PIN, 1]], [EV_POWER]],  # 1000 ms after the rail went off
    ]


def test_cycle_goes_off_then_on_after_the_minimum_off_time(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        p = Power(Config(min_off_ms=300))
        step(p, 0, A_ON, 0)
        step(p, 20, rail=5080)
        step(p, 1000, A_CYCLE, 5080)
        step(p, 1030, rail=0)
        step(p, 1329, rail=0)
        step(p, 1330, rail=0)
        step(p, 1360, rail=5080)
    """,
    )
    assert [o[0] for o in out] == ["STARTING", "ON", "STOPPING", "OFF", "OFF", "STARTING", "ON"]
    assert out[3][2] == [EV_POWER, EV_DEFERRED]


def test_reset_is_a_pulse_of_fixed_width_and_only_while_on(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        p = Power(Config(reset_ms=100))
        step(p, 0, A_RESET, 0)
        step(p, 10, A_ON, 0)
        step(p, 20, rail=5080)
        step(p, 1000, A_RESET, 5080)
        step(p, 1099, rail=5080)
        step(p, 1100, rail=5080)
    """,
    )
    assert out == [
        ["OFF", [], [EV_REFUSED]],
        ["STARTING", [[RESET_PIN, 1], [RAIL_PIN, 1]], [EV_POWER]],
        ["ON", [[RESET_PIN, 0]], [EV_POWER]],
        ["ON", [[RESET_PIN, 1]], [EV_RESET]],
        ["ON", [], []],
        ["ON", [[RESET_PIN, 0]], [EV_RESET]],
    ]


def test_power_button_short_press_is_on_or_graceful_off_and_long_press_forces_off(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        p = Power(Config(button_ms=200, grace_ms=1000))
        step(p, 0, A_BUTTON, 0)
        step(p, 20, rail=5080)
        step(p, 100, A_BUTTON, 5080)
        step(p, 300, rail=5080)
        step(p, 1100, rail=5080)
        step(p, 1120, rail=0)
        p2 = Power(Config(min_off_ms=0))
        step(p2, 0, A_ON, 0)
        step(p2, 20, rail=5080)
        step(p2, 30, A_BUTTON, 5080)
        step(p2, 40, A_BUTTON_LONG, 5080)
    """,
    )
    assert out == [
        ["STARTING", [[RESET_PIN, 1], [RAIL_PIN, 1]], [EV_POWER]],
        ["ON", [[RESET_PIN, 0]], [EV_POWER]],
        ["STOPPING", [[BUTTON_PIN, 1]], [EV_POWER]],  # the node is asked to shut down; the rail stays on
        ["STOPPING", [[BUTTON_PIN, 0]], []],
        ["STOPPING", [[RAIL_PIN, 0]], [EV_POWER]],  # grace time over: cut
        ["OFF", [], [EV_POWER]],
        ["STARTING", [[RESET_PIN, 1], [RAIL_PIN, 1]], [EV_POWER]],
        ["ON", [[RESET_PIN, 0]], [EV_POWER]],
        ["STOPPING", [[BUTTON_PIN, 1]], [EV_POWER]],
        ["STOPPING", [[RAIL_PIN, 0]], [EV_POWER]],  # a long press does not wait for the grace time
    ]


def test_a_rail_that_does_not_discharge_is_off_after_the_stop_timeout_with_a_warning(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        p = Power(Config(stop_timeout_ms=500))
        step(p, 0, A_ON, 0)
        step(p, 20, rail=5080)
        step(p, 100, A_OFF, 5080)
        step(p, 599, rail=3000)
        ev = step(p, 600, rail=3000)
        out(ev[0][0], ev[0][2])
        """,
    )
    assert out[2:] == [
        ["STOPPING", [[RAIL_PIN, 0]], [EV_POWER]],
        ["STOPPING", [], []],
        ["OFF", [], [EV_POWER, EV_POWER]],
        [2, "rail still 3000 mV after 500 ms"],
    ]


def test_cycle_clears_a_fault_and_an_off_cancels_a_deferred_on(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        p = Power(Config(rail_timeout_ms=100, min_off_ms=300))
        step(p, 0, A_ON, 0)
        step(p, 100, rail=0)
        step(p, 200, A_CYCLE, 0)
        step(p, 499, rail=0)
        step(p, 500, rail=0)
        step(p, 520, rail=5080)
        step(p, 600, A_OFF, 5080)
        step(p, 610, rail=0)
        step(p, 700, A_ON, 0)
        step(p, 800, A_OFF, 0)
        step(p, 2000, rail=0)
        """,
    )
    assert [o[0] for o in out] == [
        "STARTING",
        "FAULT",
        "OFF",
        "OFF",
        "STARTING",
        "ON",
        "STOPPING",
        "OFF",
        "OFF",
        "OFF",
        "OFF",
    ]
    assert out[2][2] == [EV_POWER, EV_DEFERRED]  # cleared, and on after the minimum off time
    assert out[8][2] == [EV_DEFERRED] and out[10] == ["OFF", [], []]  # the OFF cancelled the deferred ON


def test_a_power_step_with_nothing_to_do_allocates_nothing(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        import micropython
        p = Power()
        p.step(0, A_ON, 0)
        p.step(20, NO_ACTION, 5080)
        r = None
        t = 30
        ok = "allocated"
        micropython.heap_lock()  # globals assigned above: storing them now allocates nothing
        try:
            while t < 1000:
                r = p.step(t, NO_ACTION, 5080)
                t += 10
            ok = "no allocation"
        except MemoryError:
            pass
        micropython.heap_unlock()
        out(ok, STATE_NAMES[p.state], len(r[0]), len(r[1]))
        """,
    )
    assert out == [["no allocation", "ON", 0, 0]]


def test_out_of_range_actions_and_boot_modes_raise(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        p = Power()
        for f in (lambda: p.step(0, 6, 0), lambda: p.select_boot_mode(4)):
            try:
                f()
                out("accepted")
            except ValueError as e:
                out(str(e))
    """,
    )
    assert out == [["power action 6"], ["boot mode 4"]]


# --- event log ---------------------------------------------------------------------------------------


def test_event_log_ring_keeps_the_newest_and_reads_from_since_oldest_first(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        from eventlog import EventLog, Reader
        log = EventLog(4)
        for i in range(10):
            log.log(1, 0x100 + i, i * 10, "e%d" % i)
        def read(since):
            r = Reader(log, since)
            got = []
            while True:
                e = r.take()
                if e is None:
                    break
                got.append(list(e))
            out(since, r.pos, got)
        read(0)
        read(8)
        read(10)
        read(11)
        out(log.next, log.count, log.overwritten)
    """,
    )
    assert out[0] == [0, 10, [[i, 1, 0x100 + i, i * 10, f"e{i}"] for i in range(6, 10)]]  # 0..5 are gone
    assert out[1] == [8, 10, [[8, 1, 0x108, 80, "e8"], [9, 1, 0x109, 90, "e9"]]]
    assert out[2] == [10, 10, []]  # nothing newer: only the end marker would follow
    assert out[3] == [11, 10, []]  # a since from the future gets nothing
    assert out[4] == [10, 4, 6]


def test_event_log_indexes_wrap_at_65536(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        from eventlog import EventLog, Reader
        log = EventLog(8)
        log.next = 65534
        idx = [log.log(2, 1, 0, "w") for _ in range(4)]
        out(idx, log.next, log.first_from(65535), log.first_from(0), log.first_from(65000), log.first_from(2))
        r = Reader(log, 65535)
        log.log(2, 1, 0, "x")  # arrives while a reader is open: it sees it too
        got = []
        e = r.take()
        while e is not None:
            got.append(e[0])
            e = r.take()
        out(got)
    """,
    )
    assert out[0] == [[65534, 65535, 0, 1], 2, 65535, 0, 65534, 2]
    assert out[1] == [[65535, 0, 1, 2]]


def test_a_reader_overtaken_by_the_ring_skips_to_the_oldest_and_counts(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        from eventlog import EventLog, Reader
        log = EventLog(3)
        log.log(1, 1, 0, "a")
        r = Reader(log, 0)
        for i in range(5):
            log.log(1, 1, 0, "b")
        out(r.take()[0], r.skipped)
    """,
    )
    assert out == [[3, 3]]


def test_event_log_reads_match_a_model_over_random_logging_and_wrapping_indexes(tmp_path: Path) -> None:
    # Random batches of logged events and reads with random `since`, indexes starting near the u16 wrap;
    # each read must return exactly the model's events: those with an index >= since (mod 65536, within
    # half the index space) still in the ring, oldest first.
    rng = random.Random(11)
    size, start = 16, 65500
    # each op: log n events, then read from `back` events before next (or from a random since if back < 0)
    ops = [[rng.randrange(0, 40), rng.randrange(-5, 25), rng.randrange(65536)] for _ in range(80)]
    out = run_mpy(
        tmp_path,
        f"""
        from eventlog import EventLog, Reader
        log = EventLog({size})
        log.next = {start}
        for n, back, since in {json.dumps(ops)}:
            for _ in range(n):
                log.log(1, 7, 0, "")
            if back >= 0:
                since = (log.next - back) & 0xFFFF
            r = Reader(log, since)
            got = []
            e = r.take()
            while e is not None:
                got.append(e[0])
                e = r.take()
            out(since, got)
        """,
    )
    logged = 0
    kinds = set()
    for (n, _, _), (since, got) in zip(ops, out, strict=True):
        logged += n
        ring = [(start + k) & 0xFFFF for k in range(max(0, logged - size), logged)]
        nxt = (start + logged) & 0xFFFF
        behind = (nxt - since) & 0xFFFF  # since more than half the index space back is "in the future"
        wanted = [i for i in ring if (i - since) & 0xFFFF < 0x8000] if behind < 0x8000 else []
        assert got == wanted, (since, nxt, ring)
        kinds.add("all" if got and got == ring else "part" if got else "none")
    assert kinds == {"all", "part", "none"}  # every case was met


# --- sensors -----------------------------------------------------------------------------------------


def test_ina226_driver_calibrates_and_reads_volts_amps_watts(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        import sensors, sim
        board = sim.Board(rail_mv=5080, load_ma=1200, rise_ms=30)
        ina = sensors.Ina226(board.i2c, shunt_mohm=10, current_lsb_ua=1000)
        ina.init()
        out(board.ina.regs[0], board.ina.regs[5])
        board.update(0)
        out(ina.bus_mv(), ina.current_ma(), ina.power_mw())
        board.set_pin(0, 1, 100)
        board.update(110)
        out(ina.bus_mv())
        board.update(130)
        out(ina.bus_mv(), ina.current_ma(), ina.power_mw(), ina.shunt_uv())
    """,
    )
    assert out[0] == [0x4527, 512]  # 0.00512 / (1 mA * 10 mOhm)
    assert out[1] == [0, 0, 0]
    assert out[2] == [2540]  # still rising
    # 1200 mA through 10 mOhm = 12 mV shunt; power register = 1200 * 4064 / 20000 = 243 -> 243 * 25 mW
    assert out[3] == [5080, 1200, 6075, 12000]


def test_sensor_drivers_decode_raw_registers(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        import sensors
        class FakeI2C:
            def __init__(self, regs):
                self.regs = regs
                self.writes = []
            def readfrom_mem_into(self, addr, reg, buf):
                v = self.regs[(addr, reg)]
                buf[0] = v >> 8
                buf[1] = v & 0xFF
            def writeto_mem(self, addr, reg, buf):
                self.writes.append([addr, reg, bytes(buf).hex()])
        i2c = FakeI2C({(0x41, 2): 0x0FE0, (0x41, 4): 0xFFF6, (0x41, 3): 0x0002, (0x41, 1): 0xFFFC,
                       (0x48, 0): 0x1900, (0x49, 0): 0xE700, (0x4A, 0): 0x7FF0})
        ina = sensors.Ina226(i2c, addr=0x41, shunt_mohm=2, current_lsb_ua=500)
        ina.init()
        out(i2c.writes)
        out(ina.bus_mv(), ina.current_ma(), ina.power_mw(), ina.shunt_uv())
        out([sensors.Tmp102(i2c, a).temp_dc() for a in (0x48, 0x49, 0x4A)])
    """,
    )
    assert out[0] == [[[0x41, 0, "4527"], [0x41, 5, "1400"]]]  # cal 5120 = 0x1400, big-endian
    # bus 4064 * 1.25 mV; current -10 * 0.5 mA; power 2 * 25 * 0.5 mW; shunt -4 * 2.5 uV
    assert out[1] == [5080, -5, 25, -10]
    assert out[2] == [[250, -250, 1279]]  # 25.0, -25.0 and the 127.9375 degC maximum


# --- console bridge ---------------------------------------------------------------------------------


def test_console_ring_counts_every_dropped_byte_and_sends_only_as_the_window_allows(tmp_path: Path) -> None:
    out = run_mpy(
        tmp_path,
        """
        import console
        sent = []
        room = [0]
        def send(fields):
            if room[0] == 0:
                return False
            room[0] -= 1
            sent.append(bytes(fields[1]))
            return True
        c = console.ConsoleBridge(None, send, size=300)
        out(c.feed(bytes(range(200))), c.pending())
        room[0] = 1
        c.pump()  # one chunk of 200
        out(c.feed(bytes(i & 0xFF for i in range(200, 560))))  # 360 into 300 free: 60 dropped
        out(c.pending(), c.take_drops(), c.take_drops(), c.dropped)
        room[0] = 10
        c.pump()
        out([len(s) for s in sent], b"".join(sent).hex())
    """,
    )
    assert out[0] == [0, 200]
    assert out[1] == [60]
    assert out[2] == [300, 60, 0, 60]
    lens, data = out[3]
    assert sum(lens) == 500 and max(lens) <= 254
    assert bytes.fromhex(data) == bytes(i & 0xFF for i in range(500))  # in order across the ring's wrap


def test_bytes_for_the_node_wait_for_a_slow_uart_in_order_and_overflow_is_counted(tmp_path: Path) -> None:
    # machine.UART.write with timeout=0 takes only what fits its buffer (None when nothing did)
    out = run_mpy(
        tmp_path,
        """
        import console
        class Uart:
            def __init__(self):
                self.room = 0
                self.got = bytearray()
            def write(self, data):
                n = min(self.room, len(data))
                self.room -= n
                self.got += data[:n]
                return n or None
        u = Uart()
        c = console.ConsoleBridge(u, None, node_size=500)
        u.room = 100
        c.from_host(bytes(range(250)))  # 100 written, 150 wait
        out(len(u.got), c.node_pending(), c.to_node, c.node_dropped)
        c.from_host(bytes(i & 0xFF for i in range(250, 650)))  # behind them: 350 of 400 fit, 50 dropped
        out(len(u.got), c.node_pending(), c.take_node_drops(), c.take_node_drops(), c.node_dropped)
        c.flush_node()  # the UART is still full: nothing moves
        u.room = 10_000
        c.flush_node()
        out(c.node_pending(), c.to_node, u.got.hex())
    """,
    )
    assert out[0] == [100, 150, 100, 0]
    assert out[1] == [100, 500, 50, 0, 50]
    pending, to_node, got = out[2]
    assert (pending, to_node) == (0, 600)
    assert bytes.fromhex(got) == bytes(i & 0xFF for i in range(600))  # in order; the newest 50 were dropped


def test_every_module_of_the_manifest_compiles_with_mpy_cross(tmp_path: Path) -> None:
    manifest = (REPO / "bmc" / "manifest.py").read_text()
    modules = re.findall(r'^module\("([\w.]+)"(?:, base_path="([^"]+)")?\)', manifest, re.M)
    assert {m for m, _ in modules} >= {
        "power.py",
        "eventlog.py",
        "sensors.py",
        "console.py",
        "hal_rp2.py",
        "main.py",
    }
    mpy_cross = require_tool("mpy-cross")
    for name, base in [*modules, ("hal_unix.py", ""), ("sim.py", "")]:
        src = REPO / "bmc" / (base or ".") / name
        proc = subprocess.run(
            [mpy_cross, "-o", str(tmp_path / "out.mpy"), str(src)], capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{src}: {proc.stderr}"


# --- the firmware on ptys --------------------------------------------------------------------------


@dataclass
class Pty:
    master: int
    slave: int
    path: str
    master_open: bool = True

    @classmethod
    def open(cls) -> Pty:
        master, slave = os.openpty()
        tty.setraw(slave)  # raw before the firmware opens it: no echo, no line discipline
        tty.setraw(master)
        return cls(master, slave, os.ttyname(slave))

    def hang_up(self) -> None:
        if self.master_open:
            self.master_open = False
            os.close(self.master)

    def close(self) -> None:
        self.hang_up()
        os.close(self.slave)

    def read(self, n: int, timeout: float = STEP) -> bytes:
        """At least ``n`` bytes written by the firmware to this tty (fails after ``timeout``)."""
        got = b""
        while len(got) < n:
            ready, _, _ = select.select([self.master], [], [], timeout)
            assert ready, f"only {len(got)} of {n} bytes arrived"
            got += os.read(self.master, 65536)
        return got


@dataclass
class Bmc:
    """The firmware process with its host line and the node's UART; always stopped at the end."""

    link_pty: Pty
    node_pty: Pty
    proc: subprocess.Popen[bytes]
    output: str = ""
    settings: list[str] = field(default_factory=list)

    def stream(self) -> FdStream:
        return FdStream(os.dup(self.link_pty.master), f"pty:{self.link_pty.path}")

    def finish(self) -> str:
        """Hang up the host line: the firmware must exit by itself, with status 0, and say its counters."""
        self.link_pty.hang_up()
        out, _ = self.proc.communicate(timeout=STEP)
        self.output = out.decode()
        assert self.proc.returncode == 0, self.output
        return self.output


StartBmc = Callable[..., Bmc]


@pytest.fixture
def start_bmc() -> Iterator[StartBmc]:
    started: list[Bmc] = []

    def start(*settings: str) -> Bmc:
        link_pty, node_pty = Pty.open(), Pty.open()
        proc = subprocess.Popen(
            [
                micropython_binary(),
                str(MAIN),
                link_pty.path,
                node_pty.path,
                f"min_off_ms={MIN_OFF_MS}",
                *settings,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MICROPYPATH": MICROPYPATH},
        )
        bmc = Bmc(link_pty, node_pty, proc)
        started.append(bmc)
        return bmc

    try:
        yield start
    finally:
        for bmc in started:
            if bmc.proc.poll() is None:
                bmc.proc.kill()
            bmc.proc.communicate()
            bmc.link_pty.close()
            bmc.node_pty.close()


async def power_event(link: Link, ending: str, seen: list[Message]) -> Message:
    """The next power transition EVENT whose text names the new state ``ending`` (e.g. "-> ON:")."""
    while True:
        ev = await recv_type(link, MsgType.EVENT, seen)
        seen.append(ev)
        if ev["code"] == EV_POWER and f"-> {ending}:" in str(ev["text"]):
            return ev


async def status(link: Link) -> Message:
    await link.send(Message.make("STATUS_GET"))
    return await recv_type(link, MsgType.STATUS)


def write_all(fd: int, data: bytes) -> None:
    """A tty may take part of a large write; the rest follows as the firmware reads."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def counts(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}


@slow
def test_hello_then_power_on_shows_the_rail_in_status(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        async with Link(bmc.stream()) as link:
            hello = await recv_type(link, MsgType.HELLO)
            assert (hello["kind"], hello["proto"]) == (DeviceKind.BMC, 1) and len(hello["uid"]) == 8
            off = await status(link)
            assert (off["power_state"], off["rail_mv"], off["current_ma"], off["power_mw"]) == (
                PowerState.OFF,
                0,
                0,
                0,
            )
            await link.send(Message.make("BOOT_MODE", mode=1))
            await link.send(Message.make("POWER", action=1))
            seen: list[Message] = []
            starting = await power_event(link, "STARTING", seen)
            assert "boot NETWORK" in str(starting["text"])
            await power_event(link, "ON", seen)
            on = await status(link)
            # the simulated rail: 5.08 V, 1.2 A through 10 mOhm, power as the INA226 computes it, 42.1 degC
            assert (on["power_state"], on["rail_mv"], on["current_ma"], on["power_mw"], on["temp_dc"]) == (
                PowerState.ON,
                5080,
                1200,
                6075,
                421,
            )
            await link.send(Message.make("PING", token=0xB3C))
            pong = await recv_type(link, MsgType.PONG)
            assert pong["token"] == 0xB3C and pong["uptime_ms"] >= starting["time_ms"]
        assert "drops: none" in bmc.finish()

    asyncio.run(scenario())


@slow
def test_cycle_waits_the_minimum_off_time_and_the_log_reads_back_oldest_first(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            seen: list[Message] = []
            await link.send(Message.make("POWER", action=1))
            await power_event(link, "ON", seen)
            await link.send(Message.make("POWER", action=2))  # CYCLE
            off = await power_event(link, "OFF", seen)
            again = await power_event(link, "STARTING", seen)
            assert again["time_ms"] - off["time_ms"] >= MIN_OFF_MS
            await power_event(link, "ON", seen)
            assert (await status(link))["power_state"] == PowerState.ON
            live = [(m["level"], m["code"], m["time_ms"], m["text"]) for m in seen if m.type == MsgType.EVENT]
            # the whole log: every event sent live, with consecutive indexes, then the end marker
            await link.send(Message.make("EVENT_LOG_GET", since=0))
            entries = []
            while True:
                e = await recv_type(link, MsgType.EVENT_LOG)
                if e["index"] == e["next"]:
                    break
                entries.append(e)
            assert [e["index"] for e in entries] == list(range(len(entries)))
            assert e["next"] == len(entries)
            logged = [(e["level"], e["code"], e["time_ms"], e["text"]) for e in entries]
            assert logged[0][2] == 0 and "up on unix" in str(logged[0][3])  # the boot event
            assert logged == live
            texts = [str(t[3]) for t in logged if t[1] == EV_POWER]
            assert [t.split(":")[0] for t in texts] == [
                "OFF -> STARTING",
                "STARTING -> ON",
                "ON -> STOPPING",
                "STOPPING -> OFF",
                "OFF -> STARTING",
                "STARTING -> ON",
            ]
            assert any(t[1] == EV_DEFERRED for t in logged)
            # since = the last two: only those, then the marker
            await link.send(Message.make("EVENT_LOG_GET", since=len(entries) - 2))
            tail = [await recv_type(link, MsgType.EVENT_LOG) for _ in range(3)]
            assert [m["index"] for m in tail] == [len(entries) - 2, len(entries) - 1, len(entries)]
            assert tail[2]["next"] == len(entries) and tail[2]["text"] == ""
        bmc.finish()

    asyncio.run(scenario())


@slow
def test_bad_values_and_refused_requests_are_answered_with_errors(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            for msg in (
                Message.make("POWER", action=9),
                Message.make("BOOT_MODE", mode=4),
                Message.make("CONSOLE_DATA", port=3, data=b"x"),
            ):
                await link.send(msg)
                err = await recv_type(link, MsgType.ERROR)
                assert (err["code"], err["ref_type"]) == (ErrorCode.BAD_VALUE, msg.type), err
                assert str(err["text"]).startswith("bad value")
            await link.send(Message.make("POWER", action=3))  # RESET while off
            err = await recv_type(link, MsgType.ERROR)
            assert (err["code"], err["ref_type"], err["text"]) == (
                ErrorCode.BUSY,
                MsgType.POWER,
                "RESET refused: power is OFF",
            )
            assert (await status(link))["power_state"] == PowerState.OFF
        bmc.finish()

    asyncio.run(scenario())


@slow
def test_a_rail_that_never_comes_good_faults_and_stays_faulted(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc("rail_mv=3000", "rail_timeout_ms=200")
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            await link.send(Message.make("POWER", action=1))
            fault = await power_event(link, "FAULT", [])
            assert fault["level"] == EventLevel.ERROR and "not good within 200 ms" in str(fault["text"])
            await asyncio.sleep(0.1)  # the rail falls in 20 ms once cut
            st = await status(link)
            assert (st["power_state"], st["rail_mv"]) == (PowerState.FAULT, 0)
            await link.send(Message.make("POWER", action=1))
            err = await recv_type(link, MsgType.ERROR)
            assert err["code"] == ErrorCode.BUSY and "FAULT" in str(err["text"])
        bmc.finish()

    asyncio.run(scenario())


@slow
def test_console_bytes_cross_both_ways_in_order(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        rng = random.Random(5)
        from_node = rng.randbytes(3000)
        to_node = rng.randbytes(3000)
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            write_all(bmc.node_pty.master, from_node)  # the node prints
            got = b""
            async with asyncio.timeout(STEP):
                while len(got) < len(from_node):
                    got += await link.console.read(0)
            assert got == from_node
            await link.console.write(to_node, port=0)  # the operator types
            await link.console.drain()
            assert bmc.node_pty.read(len(to_node)) == to_node
        final = counts(bmc.finish())
        assert (final["to_host"], final["to_node"], final["console_dropped"]) == (3000, 3000, 0)

    asyncio.run(scenario())


@slow
def test_a_console_flood_drops_bytes_but_counts_every_one(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        flood = bytes(i & 0xFF for i in range(30000))
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            write_all(bmc.node_pty.master, flood)  # far more than the 4 KiB ring while the window is busy
            got = b""
            reported = 0
            seen: list[Message] = []
            async with asyncio.timeout(STEP * 2):
                while len(got) + reported < len(flood):
                    while link.console.pending(0):
                        got += await link.console.read(0)
                    try:
                        async with asyncio.timeout(0.2):
                            ev = await recv_type(link, MsgType.EVENT, seen)
                    except TimeoutError:
                        continue
                    if ev["code"] == EV_CONSOLE_DROP:
                        assert ev["level"] == EventLevel.WARNING
                        reported += int(str(ev["text"]).split()[2])
            assert reported > 0 and len(got) + reported == len(flood)
        final = counts(bmc.finish())
        assert final["console_dropped"] == reported and final["to_host"] == len(got)

    asyncio.run(scenario())


@slow
def test_garbage_on_the_line_is_counted_and_the_firmware_keeps_working(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            good = encode_frame(Message.make("PING", token=1).to_frame(seq=9, flags=1))
            bad_crc = bytearray(good)
            bad_crc[5] ^= 0x40
            for chunk in (b"\x00garbage\x00", b"\x07" * 300 + b"\x00", bytes(bad_crc), b"\x02\x01\x00"):
                os.write(bmc.link_pty.master, chunk)
            os.write(bmc.link_pty.master, encode_frame(Frame(type=0x55, body=b"?")))
            err = await recv_type(link, MsgType.ERROR)
            assert (err["code"], err["ref_type"]) == (ErrorCode.UNKNOWN_TYPE, 0x55)
            reported: dict[str, int] = {}
            while not {"cobs", "oversize", "crc", "short", "unknown_type"} <= reported.keys():
                ev = await recv_type(link, MsgType.EVENT)
                if ev["code"] == EV_LINK_DROPS:
                    assert ev["level"] == EventLevel.WARNING
                    reported = counts(str(ev["text"]))
            assert reported["oversize"] == 1 and reported["crc"] == 1 and reported["short"] == 1
            await link.send(Message.make("PING", token=2))
            assert (await recv_type(link, MsgType.PONG))["token"] == 2
            await link.send(Message.make("POWER", action=1))
            await power_event(link, "ON", [])
            write_all(bmc.node_pty.master, b"still here\n")
            got = b""
            async with asyncio.timeout(STEP):
                while len(got) < 11:
                    got += await link.console.read(0)
            assert got == b"still here\n"
        final = counts(bmc.finish())
        assert final["crc"] == 1 and final["unknown_type"] == 1

    asyncio.run(scenario())


@slow
def test_reset_pulse_and_power_button_over_the_link(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc("grace_ms=300", "reset_ms=100")
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            seen: list[Message] = []
            await link.send(Message.make("POWER", action=4))  # BUTTON while off: on
            await power_event(link, "ON", seen)
            await link.send(Message.make("POWER", action=3))  # RESET
            events = []
            while len(events) < 2:
                ev = await recv_type(link, MsgType.EVENT)
                if ev["code"] == EV_RESET:
                    events.append(ev)
            assert [e["text"] for e in events] == ["reset asserted for 100 ms", "reset released"]
            assert events[1]["time_ms"] - events[0]["time_ms"] >= 100
            await link.send(Message.make("POWER", action=4))  # BUTTON while on: graceful off
            asked = await power_event(link, "STOPPING", seen)
            assert "graceful" in str(asked["text"])
            cut = await power_event(link, "STOPPING", seen)  # the grace time is over: the rail is cut
            assert "grace time over" in str(cut["text"]) and cut["time_ms"] - asked["time_ms"] >= 300
            await power_event(link, "OFF", seen)
            await asyncio.sleep(MIN_OFF_MS / 1000)
            await link.send(Message.make("POWER", action=1))
            await power_event(link, "ON", seen)
            await link.send(Message.make("POWER", action=5))  # BUTTON_LONG: forced off at once
            forced = await power_event(link, "STOPPING", seen)
            assert str(forced["text"]).endswith("BUTTON_LONG")
            await power_event(link, "OFF", seen)
            assert (await status(link))["power_state"] == PowerState.OFF
        bmc.finish()

    asyncio.run(scenario())


@slow
def test_a_restarted_host_finds_the_node_still_powered(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc()
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            await link.send(Message.make("POWER", action=1))
            await power_event(link, "ON", [])
        # a new host session on the same line: the firmware's link is resynchronised (RST), the node stays on
        async with Link(bmc.stream()) as link:
            await link.send(Message.make("PING", token=5))
            while (await recv_type(link, MsgType.PONG))["token"] != 5:
                pass  # a PONG the old host left unacknowledged may come first
            assert (await status(link))["power_state"] == PowerState.ON
        bmc.finish()

    asyncio.run(scenario())


@slow
def test_status_is_sent_every_period_when_configured(start_bmc: StartBmc) -> None:
    async def scenario() -> None:
        bmc = start_bmc("status_ms=100")
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            loop = asyncio.get_running_loop()
            first = await recv_type(link, MsgType.STATUS)
            t0 = loop.time()
            for _ in range(3):
                st = await recv_type(link, MsgType.STATUS)
            assert st["power_state"] == first["power_state"] == PowerState.OFF
            assert loop.time() - t0 >= 0.25  # three periods of 100 ms, not a burst
        bmc.finish()

    asyncio.run(scenario())


# --- the console bridge at its documented rate -------------------------------------------------------

# The node's UART runs at 115 200 8N1 on the board (bmc/README.md, "Console bridge"): 11 520 bytes/s each
# way. The unix port's pty has no baud rate, so the test paces both ends at that rate itself.
CONSOLE_RATE = 115_200 // 10
MEGABYTE = 1_000_000
PACE_CHUNK = 256


def pace(n: int, start: float) -> float:
    """When the ``n``-th paced chunk is due: so many bytes at CONSOLE_RATE after ``start``."""
    return start + n * PACE_CHUNK / CONSOLE_RATE


def is_subsequence(part: bytes, whole: bytes) -> bool:
    """``part`` is ``whole`` with some bytes left out, the rest in order (greedy matching is exact)."""
    it = iter(whole)
    return all(any(b == c for c in it) for b in part)


@slow
@pytest.mark.timeout(240)
def test_a_megabyte_each_way_through_the_console_bridge_at_the_node_uart_rate_loses_nothing(
    start_bmc: StartBmc,
) -> None:
    rng = random.Random(1_000_000)
    up, down = rng.randbytes(MEGABYTE), rng.randbytes(MEGABYTE)
    heard = bytearray()  # what the node's UART received
    failures: list[BaseException] = []

    def node(bmc: Bmc, start: float) -> None:
        # The node prints ``up`` at the UART rate and reads what the host typed, in one thread.
        fd = bmc.node_pty.master
        sent = 0
        try:
            while sent < len(up) or len(heard) < len(down):
                due = pace(sent // PACE_CHUNK, start) if sent < len(up) else time.monotonic() + 0.1
                ready, _, _ = select.select([fd], [], [], max(0.0, due - time.monotonic()))
                if ready:
                    heard.extend(os.read(fd, 65536))
                elif sent < len(up):
                    write_all(fd, up[sent : sent + PACE_CHUNK])
                    sent += PACE_CHUNK
                assert time.monotonic() < start + len(up) / CONSOLE_RATE + 30, "the node side stalled"
        except BaseException as exc:  # handed to the test's thread
            failures.append(exc)

    async def scenario() -> None:
        bmc = start_bmc()
        stalled = ""
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            start = time.monotonic()
            thread = threading.Thread(target=node, args=(bmc, start), daemon=True)
            thread.start()

            async def host_types() -> None:
                for n, off in enumerate(range(0, len(down), PACE_CHUNK)):
                    await asyncio.sleep(max(0.0, pace(n, start) - time.monotonic()))
                    await link.console.write(down[off : off + PACE_CHUNK], port=0)
                await link.console.drain()

            got = bytearray()

            async def host_reads() -> None:
                while len(got) < len(up):
                    async with asyncio.timeout(STEP * 3):  # generous: a loaded machine slows the firmware
                        got.extend(await link.console.read(0))

            try:
                await asyncio.gather(host_reads(), host_types())
            except TimeoutError:
                stalled = (
                    f"{len(got)} of {len(up)} bytes to the host, {len(heard)} of {len(down)} to the node"
                )
        said = bmc.finish()  # the line closed: the firmware exits and says its counters
        assert not stalled, f"{stalled}; firmware: {said}"
        thread.join(STEP * 4)
        assert not failures, failures
        assert got == up and bytes(heard) == down
        final = counts(said)
        assert (final["to_host"], final["to_node"], final["console_dropped"]) == (MEGABYTE, MEGABYTE, 0)

    asyncio.run(scenario())


@slow
@pytest.mark.parametrize(
    "stall",
    [
        pytest.param(1.0, id="ring-overflows"),
        # long enough for the BMC's link to give the host up (8 backed-off rounds of at most rto_max=300
        # ms here): the console bytes then unacknowledged may arrive late or never, and are reported
        pytest.param(4.0, id="link-gives-up"),
    ],
)
def test_a_host_that_stops_reading_loses_console_bytes_counted_exactly(
    start_bmc: StartBmc, stall: float
) -> None:
    rng = random.Random(7)
    before, flood = rng.randbytes(3000), rng.randbytes(20_000)
    total = len(before) + len(flood)

    async def scenario() -> None:
        bmc = start_bmc("rto_max=300")
        async with Link(bmc.stream()) as link:
            await recv_type(link, MsgType.HELLO)
            write_all(bmc.node_pty.master, before)
            got = bytearray()
            async with asyncio.timeout(STEP):
                while len(got) < len(before):
                    got += await link.console.read(0)
            assert got == before
            # The host stops reading its line (its event loop is held: no reads, no ACKs) while the node
            # prints far more than the ring (4 KiB) and the window (8 frames) hold.
            write_all(bmc.node_pty.master, flood)
            time.sleep(stall)  # noqa: ASYNC251 - blocking on purpose: the host reads nothing
            seen: list[Message] = []
            dropped = unacked = 0  # as the BMC's events report them
            async with asyncio.timeout(STEP * 2):
                while len(got) + dropped + unacked < total:
                    while link.console.pending(0):
                        got += await link.console.read(0)
                    try:
                        async with asyncio.timeout(0.2):
                            ev = await recv_type(link, MsgType.EVENT, seen)
                    except TimeoutError:
                        continue
                    if ev["code"] == EV_CONSOLE_DROP:
                        dropped += int(str(ev["text"]).split()[2])
                    elif ev["code"] == EV_CONSOLE_UNACKED:
                        unacked += int(str(ev["text"]).split()[4])
            await asyncio.sleep(0.3)  # nothing more arrives: what is missing was dropped, not late
            while link.console.pending(0):
                got += await link.console.read(0)
        final = counts(bmc.finish())
        assert final["to_host"] + final["console_dropped"] == total, final  # every byte the node printed
        assert final["console_dropped"] == dropped > 0 and final["console_unacked"] == unacked, final
        assert got[: len(before)] == before and is_subsequence(bytes(got[len(before) :]), flood)
        if stall < 3:  # the link kept the host: exactly the dropped bytes are missing
            assert final["peer_lost"] == unacked == 0 and total - len(got) == dropped, final
        else:  # of the bytes unacknowledged when it gave the host up, some arrived late, the rest never
            assert final["peer_lost"] > 0 and unacked > 0, final
            assert dropped <= total - len(got) <= dropped + unacked, final

    asyncio.run(scenario())
