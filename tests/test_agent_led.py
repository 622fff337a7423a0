"""The agent's LED decisions (nodeagent/led.py core): gauge from telemetry, the mode wanted, the plan."""

from __future__ import annotations

import math
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from scalerunner.nodeagent.led import KEEPALIVE_S, Gauge, Mode, Shown, after, gauge_of, plan, wanted
from scalerunner.protocol.mqtt import Telemetry


def _tele(load1: float, temp_c: float | None = 40.0) -> Telemetry:
    return Telemetry(
        node="n1", ts=1.0, load1=load1, cpu_pct=0.0, mem_used_mb=1, mem_total_mb=2, temp_c=temp_c
    )


def test_load_is_a_share_of_the_cpus_capped_at_100() -> None:
    assert gauge_of(_tele(0.0), 4).load_pct == 0
    assert gauge_of(_tele(1.0), 4).load_pct == 25
    assert gauge_of(_tele(4.0), 4).load_pct == 100
    assert gauge_of(_tele(9.5), 4).load_pct == 100


def test_temperature_is_clamped_to_what_led_gauge_carries_and_none_is_cool() -> None:
    assert gauge_of(_tele(0.0, 71.26), 1).temp_c == 71.3
    assert gauge_of(_tele(0.0, 500.0), 1).temp_c == 150.0
    assert gauge_of(_tele(0.0, -80.0), 1).temp_c == -40.0
    assert gauge_of(_tele(0.0, None), 1).temp_c == 0.0


@given(st.floats(min_value=0, max_value=1e6), st.floats(allow_nan=True) | st.none(), st.integers(0, 512))
def test_any_sample_gives_a_gauge_the_firmware_accepts(load: float, temp: float | None, cpus: int) -> None:
    g = gauge_of(_tele(load, temp), cpus)
    assert 0 <= g.load_pct <= 100
    assert -40.0 <= g.temp_c <= 150.0 and math.isfinite(g.temp_c)


def test_identify_shows_until_its_end_then_the_gauge() -> None:
    assert wanted(None, 5.0) == "GAUGE"
    assert wanted(10.0, 5.0) == "IDENTIFY"
    assert wanted(10.0, 10.0) == "GAUGE"


def test_a_fresh_port_gets_the_gauge_before_the_mode() -> None:
    g = Gauge(50, 30.0)
    assert plan(Shown(), "GAUGE", g, now=0.0) == ["gauge", "mode"]
    assert plan(Shown(), "GAUGE", None, now=0.0) == ["mode"]  # no sample yet: the mode alone


def test_a_quiet_led_is_pinged_so_the_firmware_does_not_call_the_host_lost() -> None:
    shown = Shown("GAUGE", Gauge(1, 1.0), sent_at=100.0)
    assert plan(shown, "GAUGE", Gauge(1, 1.0), now=100.0 + KEEPALIVE_S - 0.01) == []
    assert plan(shown, "GAUGE", Gauge(1, 1.0), now=100.0 + KEEPALIVE_S) == ["ping"]


gauges = st.none() | st.builds(Gauge, st.integers(0, 100), st.floats(-40, 150))
modes: st.SearchStrategy[Mode] = st.sampled_from(["GAUGE", "IDENTIFY"])


@given(
    st.lists(st.tuples(modes, gauges, st.floats(0, 10)), min_size=1, max_size=20),
    st.sampled_from([None, "GAUGE", "IDENTIFY"]),
)
def test_carrying_out_each_plan_leaves_the_led_showing_what_is_wanted(
    wants: list[tuple[Mode, Gauge | None, float]], start: Mode | None
) -> None:
    shown, now, last_gauge = Shown(mode=start), 0.0, None
    for mode, gauge, dt in wants:
        now += dt
        steps = plan(shown, mode, gauge, now)
        assert len(steps) == len(set(steps)) and ("ping" not in steps or len(steps) == 1)
        for step in steps:
            shown = after(shown, step, mode, gauge, now)
        last_gauge = gauge if gauge is not None else last_gauge
        assert shown.mode == mode and shown.gauge == last_gauge
        assert now - shown.sent_at < KEEPALIVE_S  # never silent for a keepalive
        assert plan(shown, mode, gauge, now) == []  # and nothing more to do


def test_the_agent_module_does_not_load_the_serial_protocol_or_the_coordinator() -> None:
    code = (
        "import sys, scalerunner.nodeagent.agent, scalerunner.nodeagent.led;"
        "heavy = {'construct', 'serial', 'fastapi', 'uvicorn'};"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & heavy);"
        "bad += [m for m in sys.modules if m.startswith('scalerunner.coordinator')];"
        "print(' '.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_coordinators_led_client_brings_no_web_framework() -> None:
    code = (
        "import sys; from scalerunner.coordinator.serial.led import LedClient;"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'fastapi', 'uvicorn', 'starlette', 'pydantic', 'prometheus_client', 'sqlite3', 'aiomqtt'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
