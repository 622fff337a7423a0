"""The dashboard's pure parts: the LED drawn from the firmware's own renderer, what counts as a
change, the power series, and a slow stream dropped instead of waited for."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.api.models import NodeView, TelemetryView
from scalerunner.coordinator.dashboard.feed import Feed, PowerHistory, changed, node_entry
from scalerunner.coordinator.dashboard.ledview import DARK, PIXELS, LedView, firmware_render
from scalerunner.coordinator.dashboard.ledview import led_of as _led_of
from scalerunner.coordinator.dashboard.routes import sse, stream

GREEN, YELLOW, RED = "#00ff00", "#ffff00", "#ff0000"


def led_of(node: str, load1: float, temp: float | None, cpus: int) -> LedView:
    led = _led_of(node, load1, temp, cpus)
    assert led is not None  # the firmware sources are in this checkout
    return led


def view(name: str = "n1", state: str = "idle", load1: float = 1.0, temp: float | None = 40.0) -> NodeView:
    tele = TelemetryView(
        ts=1.0, load1=load1, cpu_pct=10, mem_used_mb=1, mem_total_mb=2, temp_c=temp, age_s=0.3
    )
    return NodeView(
        name=name, state=state, health="good", arch="arm64", mac="02:00:00:00:00:01", telemetry=tele
    )


def test_the_led_bands_are_the_firmwares_green_yellow_red_at_50_and_70_degrees() -> None:
    assert led_of("n", 4.0, 49.9, 4).pixels == (GREEN,) * PIXELS
    assert led_of("n", 4.0, 50.0, 4).pixels == (YELLOW,) * PIXELS
    assert led_of("n", 4.0, 69.9, 4).pixels == (YELLOW,) * PIXELS
    assert led_of("n", 4.0, 70.0, 4).pixels == (RED,) * PIXELS
    assert led_of("n", 0.0, 90.0, 4).colour == DARK  # no load lights nothing, whatever the heat
    assert (
        led_of("n", 0.2, None, 8).pixels == (GREEN,) + (DARK,) * 7
    )  # any load lights one; no sensor is cool


@given(
    load1=st.floats(0, 64, allow_nan=False),
    temp=st.none() | st.floats(-60, 200, allow_nan=False),
    cpus=st.integers(1, 16),
)
def test_the_led_lights_a_prefix_in_one_band_colour_growing_with_load(
    load1: float, temp: float | None, cpus: int
) -> None:
    led = led_of("n", load1, temp, cpus)
    lit = [p for p in led.pixels if p != DARK]
    assert led.pixels[: len(lit)] == tuple(lit) and len(set(lit)) <= 1
    assert len(lit) == math.ceil(led.load_pct * PIXELS / 100)
    assert len([p for p in led_of("n", load1 + 1, temp, cpus).pixels if p != DARK]) >= len(lit)


def test_without_the_firmware_sources_there_is_no_led_rather_than_an_error(tmp_path: Path) -> None:
    assert firmware_render(tmp_path / "render.py") is None


def test_an_entry_changes_with_telemetry_but_not_with_its_age_and_an_offline_led_is_dark() -> None:
    a = node_entry(view(), 4, 2.5)
    older = view()
    assert older.telemetry is not None
    older.telemetry.age_s = 9.0
    assert changed({"n1": a}, {"n1": node_entry(older, 4, 2.5)}) == []
    b = node_entry(view(load1=3.0), 4, 2.5)
    assert changed({"n1": a}, {"n1": b}) == [b]
    assert changed({}, {"n1": a}) == [a]
    assert node_entry(view(state="offline"), 4, None)["led"] is None


def test_power_history_adds_a_point_per_new_sample_round_and_stays_bounded() -> None:
    h = PowerHistory(limit=3)
    assert h.add({}, {}) is None
    assert h.add({"a": (10.0, 2.0), "b": (10.0, 3.5)}, {"a": 0.1}) == {
        "at": 10.0,
        "watts": 5.5,
        "energy_wh": 0.1,
    }
    assert h.add({"a": (10.0, 2.0)}, {}) is None  # the same round again
    for t in (11.0, 12.0, 13.0):
        h.add({"a": (t, 1.0)}, {})
    assert [p["at"] for p in h.series()] == [11.0, 12.0, 13.0]


def test_an_sse_frame_is_one_event_line_and_one_data_line() -> None:
    frame = sse("node", {"name": "n1", "log": "a\nb"})
    assert frame.endswith(b"\n\n") and frame.count(b"\n") == 3
    kind, data = frame.decode().split("\n")[:2]
    assert kind == "event: node" and json.loads(data.removeprefix("data: "))["log"] == "a\nb"


class _Nodes:
    def __init__(self) -> None:
        self.items = [view()]

    def views(self) -> list[NodeView]:
        return self.items


def test_a_stream_that_falls_behind_is_dropped_and_the_others_keep_their_events() -> None:
    async def main() -> None:
        nodes = _Nodes()
        feed = Feed(nodes, {"n1": 4}, queue_size=2)
        slow, snap = await feed.subscribe()
        assert [n["name"] for n in snap["nodes"]] == ["n1"] and snap["jobs"] is None
        fast, _ = await feed.subscribe()
        for load in (2.0, 3.0, 4.0):
            nodes.items = [view(load1=load)]
            feed.look()
            fast.queue.get_nowait()  # this one keeps up
        assert slow.dropped and slow not in feed.clients and feed.dropped == 1
        assert not fast.dropped and fast in feed.clients

    asyncio.run(main())


def test_stopping_the_feed_ends_a_stream_that_waits_for_events_at_once() -> None:
    async def main() -> None:
        feed = Feed(_Nodes(), {"n1": 4})
        await feed.start()
        events = stream(feed, keepalive=60.0)
        first = await anext(events)
        assert first.startswith(b"event: snapshot\n")
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # nothing changed: the stream waits (the keepalive is a minute off)
        await feed.stop()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 1.0)
        assert not feed.clients

    asyncio.run(main())
