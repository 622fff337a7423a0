"""A node's LED indicator as the dashboard draws it, derived the way the real LED is.

Nothing is re-implemented here: the load and temperature go through the agent's own
``gauge_of`` (nodeagent/led.py: load1 over the node's CPUs, capped, temperature clamped), and
the pixels come from the firmware's own ``render.gauge`` (ledfw/render.py: lit pixels rounded
up, green below 50 °C, yellow below 70 °C, red above), executed here under CPython with a
stand-in for MicroPython's ``const``. The LED draws at most 40 % duty (PoE budget); a screen
has no such budget, so each pixel is scaled back to full range for display.
"""

from __future__ import annotations

import builtins
import functools
import logging
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...firmware import REPO
from ...nodeagent.led import gauge_of
from ...protocol.mqtt import Telemetry

log = logging.getLogger("scalerunner.coordinator.dashboard")

RENDER_SOURCE = REPO / "ledfw" / "render.py"
PIXELS = 8  # the firmware's default strip (ledfw/hal_rp2.py, hal_unix.py)
DARK = "#000000"


@dataclass(frozen=True)
class LedView:
    pixels: tuple[str, ...]  # "#rrggbb" per pixel, first to last
    load_pct: int
    temp_c: float

    @property
    def colour(self) -> str:
        """The colour of the lit pixels (the gauge lights one band colour), DARK if none is lit."""
        return next((p for p in self.pixels if p != DARK), DARK)


@functools.cache
def firmware_render(path: Path = RENDER_SOURCE) -> Any:
    """ledfw/render.py, executed with ``micropython.const`` as the identity (what it is off-device);
    None, said once in the log, where the firmware sources are not installed (a wheel without the repo)."""
    if not path.is_file():
        log.warning("no LED firmware at %s: the dashboard draws no LEDs", path)
        return None
    stand_in = types.ModuleType("micropython")
    stand_in.const = lambda value: value  # type: ignore[attr-defined]
    real_import = builtins.__import__

    def importer(name: str, *args: Any, **kwargs: Any) -> Any:
        return stand_in if name == "micropython" else real_import(name, *args, **kwargs)

    namespace: dict[str, Any] = {
        "__name__": "ledfw_render",
        "__builtins__": {**vars(builtins), "__import__": importer},
    }
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # our own firmware source
    return types.SimpleNamespace(**namespace)


def led_of(node: str, load1: float, temp_c: float | None, cpus: int, pixels: int = PIXELS) -> LedView | None:
    """What the node's LED shows in GAUGE mode for this telemetry (None: no firmware to ask)."""
    fw = firmware_render()
    if fw is None:
        return None
    tele = Telemetry(
        node=node, ts=0.0, load1=load1, cpu_pct=0.0, mem_used_mb=0, mem_total_mb=0, temp_c=temp_c
    )
    gauge = gauge_of(tele, cpus)
    temp_dc = round(gauge.temp_c * 10)  # what LedClient.gauge sends
    return LedView(_rendered(gauge.load_pct, temp_dc, pixels), gauge.load_pct, gauge.temp_c)


@functools.lru_cache(maxsize=8192)
def _rendered(load_pct: int, temp_dc: int, pixels: int) -> tuple[str, ...]:
    """The firmware's gauge pixels as "#rrggbb", once per (load, temperature): a look at a big rack
    draws the same few hundred gauges again and again."""
    fw = firmware_render()
    params = fw.Params()
    params.mode = fw.GAUGE
    params.load = load_pct
    params.temp = temp_dc
    buf = bytearray(3 * pixels)
    fw.render(buf, pixels, fw.GAUGE, 0, params)
    return tuple(_hex(buf[i : i + 3], fw.CAP) for i in range(0, 3 * pixels, 3))


def _hex(rgb: bytes | bytearray, cap: int) -> str:
    return "#" + "".join(f"{min(255, c * 255 // cap):02x}" for c in rgb)
