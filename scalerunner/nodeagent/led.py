"""The node's LED indicator, driven by the agent: load -> gauge, temperature -> colour, identify.

Functional core (no I/O, clock passed in): ``gauge_of`` turns a telemetry sample into what the
firmware's LED_GAUGE takes, ``wanted`` says which mode the LED should show, and ``plan`` the
messages that bring the LED from what it was last told to what is wanted. The firmware does the
rest: it picks the colour band from the temperature, and shows HOST_LOST by itself when the agent
goes quiet (ledfw/README.md), so the agent sends something at least every ``KEEPALIVE_S``.

The shell, ``LedDriver``, talks to the firmware through ``AgentLedClient`` (nodeagent/ledclient.py:
the requests of the coordinator's ``LedClient`` over a struct codec and a stop-and-wait link, so the
agent loads neither construct nor pyserial; docs/agent.md has the figures). A port
that is missing, silent or answering garbage is logged with its name and retried with back-off;
it never takes the agent down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..protocol.mqtt import Telemetry
from .agent import Backoff

if TYPE_CHECKING:
    from .ledclient import AgentLedClient

log = logging.getLogger("scalerunner.nodeagent.led")

KEEPALIVE_S = 3.0  # the firmware calls the host lost after 10 s of silence (its default)
TEMP_MIN, TEMP_MAX = -40.0, 150.0  # what LED_GAUGE carries (firmware: -400..1500 tenths)

Mode = Literal["GAUGE", "IDENTIFY"]
Step = Literal["gauge", "mode", "ping"]


# -- functional core ------------------------------------------------------------------------


@dataclass(frozen=True)
class Gauge:
    load_pct: int  # 0..100
    temp_c: float  # TEMP_MIN..TEMP_MAX


def gauge_of(tele: Telemetry, cpus: int) -> Gauge:
    """Load as a share of the node's CPUs (load1 / cpus, capped at 100 %) and the temperature.

    A node without a thermal sensor shows the coolest band: no reading is no alarm.
    """
    load = tele.load1 / max(cpus, 1) * 100.0
    pct = 0 if not math.isfinite(load) else int(min(100.0, max(0.0, round(load))))
    temp = tele.temp_c if tele.temp_c is not None and math.isfinite(tele.temp_c) else 0.0
    return Gauge(pct, round(min(TEMP_MAX, max(TEMP_MIN, temp)), 1))


def wanted(identify_until: float | None, now: float) -> Mode:
    return "IDENTIFY" if identify_until is not None and now < identify_until else "GAUGE"


@dataclass(frozen=True)
class Shown:
    """What the LED was last told. After (re)opening the port nothing is known."""

    mode: Mode | None = None
    gauge: Gauge | None = None
    sent_at: float = -math.inf


def plan(
    shown: Shown, mode: Mode, gauge: Gauge | None, now: float, keepalive: float = KEEPALIVE_S
) -> list[Step]:
    """The messages to send, in order: the gauge before the mode, so that leaving identify shows
    the current load at once; a ping when nothing else was sent for ``keepalive`` seconds."""
    steps: list[Step] = []
    if gauge is not None and gauge != shown.gauge:
        steps.append("gauge")
    if mode != shown.mode:
        steps.append("mode")
    if not steps and now - shown.sent_at >= keepalive:
        steps.append("ping")
    return steps


def after(shown: Shown, step: Step, mode: Mode, gauge: Gauge | None, now: float) -> Shown:
    """``shown`` once ``step`` was acknowledged by the firmware."""
    if step == "gauge":
        return Shown(shown.mode, gauge, now)
    if step == "mode":
        return Shown(mode, shown.gauge, now)
    return Shown(shown.mode, shown.gauge, now)


# -- the shell ----------------------------------------------------------------------------------


class LedDriver:
    """Keeps the LED on ``port`` showing the latest telemetry, or identify while it is requested.

    ``show(tele)`` and ``identify(until)`` only record what is wanted and wake the driver's task;
    they never wait for the device, so a slow or absent LED cannot hold up telemetry or commands.
    """

    def __init__(
        self,
        port: str,
        *,
        node: str,
        cpus: int,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        timeout: float = 2.0,
        retry_min: float = 1.0,
        retry_max: float = 30.0,
        baud: int = 115200,
    ) -> None:
        self.port = port
        self.node = node
        self.cpus = cpus
        self.timeout = timeout
        self.baud = baud
        self._clock = clock
        self._rand = rand
        self._backoff = Backoff(retry_min, retry_max)
        self._gauge: Gauge | None = None
        self._identify_until: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.failures = 0  # openings or exchanges that failed
        self.sent = 0  # messages the firmware acknowledged

    def _extra(self, **fields: object) -> dict[str, object]:
        return {"node": self.node, "port": self.port, **fields}

    def show(self, tele: Telemetry) -> None:
        self._gauge = gauge_of(tele, self.cpus)
        self._wake.set()

    def identify(self, until: float) -> None:
        self._identify_until = until
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"agent-led-{self.node}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                from .ledclient import AgentLedClient  # loaded only with an LED

                async with AgentLedClient(self.port, baud=self.baud, timeout=self.timeout) as led:
                    await self._drive(led)
            except Exception as exc:  # whatever the device does, the agent goes on
                self.failures += 1
                was = self.connected
                self.connected = False
                delay = self._backoff.next_delay(time.monotonic(), self._rand())
                log.warning(
                    "LED indicator lost: %s" if was else "LED indicator unavailable: %s",
                    exc or type(exc).__name__,
                    extra=self._extra(error=type(exc).__name__, delay_s=round(delay, 2)),
                )
                await asyncio.sleep(delay)

    async def _drive(self, led: AgentLedClient) -> None:
        from ..protocol.enums import LedMode

        shown = Shown()
        while True:
            now = self._clock()
            mode = wanted(self._identify_until, now)
            gauge = self._gauge
            self._wake.clear()
            for step in plan(shown, mode, gauge, now):
                if step == "gauge" and gauge is not None:
                    state = await led.gauge(gauge.load_pct, gauge.temp_c)
                elif step == "mode":
                    state = await led.set_mode(int(LedMode[mode]))
                else:
                    state = await led.state()
                shown = after(shown, step, mode, gauge, self._clock())
                self.sent += 1
                log.debug("LED %s", step, extra=self._extra(mode=state.mode))
            if not self.connected:
                self.connected = True
                self._backoff.connected(time.monotonic())
                log.info("LED indicator driven", extra=self._extra(mode=shown.mode))
            now = self._clock()
            wait = shown.sent_at + KEEPALIVE_S - now
            if self._identify_until is not None and now < self._identify_until:
                wait = min(wait, self._identify_until - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.0))


__all__ = ["KEEPALIVE_S", "Gauge", "LedDriver", "Shown", "after", "gauge_of", "plan", "wanted"]
