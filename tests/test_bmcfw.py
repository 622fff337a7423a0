"""The BMC firmware's pure modules (bmc/power.py, eventlog.py, sensors.py, console.py) under the real
MicroPython unix port: each test runs a short script that drives a module with a clock and inputs of its
choosing and prints what came out as JSON lines, which the test checks exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.micropython]

REPO = Path(__file__).resolve().parents[1]
# ".frozen" first: MICROPYPATH replaces the default path, and asyncio and friends are frozen modules.
MICROPYPATH = os.pathsep.join(
    [".frozen", str(REPO / "bmc"), str(REPO / "scalerunner/protocol/mpy"), str(REPO / "scalerunner/protocol")]
)

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
EV_POWER, EV_FAULT, EV_RESET, EV_BUTTON, EV_REFUSED, EV_BOOT_MODE, EV_DEFERRED = range(0x110, 0x117)


def micropython_binary() -> str:
    found = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")
    if found is None:
        pytest.fail("the micropython unix port is not installed (make setup installs it)")
    return found


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
