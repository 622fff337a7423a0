# fw: the LED indicator firmware's logic and tasks (docs/protocol.md; ledfw/README.md).
#
# Firmware gets its hardware as a HAL object (hal_rp2, hal_unix); main.py picks one.
# Two asyncio tasks that never block: one polls the serial link and runs the
# host-lost watchdog, one renders the pixels at a fixed frame rate.

import asyncio
import time

from micropython import const

import render
import srp
import srplink

FW = (0, 1, 0)
_KIND_LED = const(1)
_PROTO = const(1)
_KIND_HOST = const(0)
_FRAME_MS = const(20)  # 50 frames a second
_POLL_MS = const(5)
HOST_TIMEOUT_MS = 10000
_DROP_REPORT_MS = const(200)
_PERIOD_MIN_MS = const(40)  # a blink half-period must last at least one frame
_TEMP_MIN_DC = const(-400)
_TEMP_MAX_DC = const(1500)

_LEVEL_DEBUG = const(0)
_LEVEL_INFO = const(1)
_LEVEL_WARNING = const(2)
_LOG_LEVEL = const(2)  # prints at or above this level

_ERR_BAD_VALUE = const(3)
_ERR_UNSUPPORTED = const(5)

# EVENT codes (0x01xx: LED firmware)
EV_STATE = const(0x0110)  # the answer to STATUS_GET: rendered state as text
EV_HOST_LOST = const(0x0111)
EV_HOST_BACK = const(0x0112)
EV_DROPS = const(0x0200)  # the same code as demo_peer's

T = srp.TYPE_IDS
_T_PING = T["PING"]
_T_HELLO = T["HELLO"]
_T_LED_SET = T["LED_SET"]
_T_LED_GAUGE = T["LED_GAUGE"]
_T_STATUS_GET = T["STATUS_GET"]
_UNSUPPORTED = (T["POWER"], T["BOOT_MODE"], T["CONSOLE_DATA"], T["EVENT_LOG_GET"])


def log(level, msg):
    if level >= _LOG_LEVEL:
        print("ledfw:", msg)


def _drops_text(d):
    # Apart from report_drops: a generator over its locals would make them cells,
    # allocated on every call (checked with heap_lock on the unix port).
    return "drops " + " ".join("%s=%d" % (r, d[r]) for r in srp.REASONS if d[r])


class Firmware:
    def __init__(self, hal, n=8, host_timeout_ms=HOST_TIMEOUT_MS, seq=None):
        # seq: the link's first sequence number (random if None; tests fix it)
        self.hal = hal
        self.n = n
        self.buf = hal.pixels(n)
        self.p = render.Params()
        self.host_timeout_ms = host_timeout_ms
        self.t0 = hal.ticks_ms()
        self.t_mode = self.t0  # when the current mode began (animations start from it)
        self.last_rx = self.t0
        self.lost = False
        self.lost_count = 0
        self.selftest = True
        self.running = True
        self.stream = hal.serial()
        self.link = srplink.Link(self.stream, on_message=self.on_message, name="ledfw", seq=seq)
        self._frames = 0
        self._reported = 0
        self._report_at = self.t0
        self.hello = (_KIND_LED, _PROTO) + FW + (hal.unique_id(),)
        self.link.send(_T_HELLO, self.hello)

    # --- state ---------------------------------------------------------------

    def uptime(self):
        return time.ticks_diff(self.hal.ticks_ms(), self.t0) & 0xFFFFFFFF

    def shown_mode(self, now):
        if self.selftest:
            if time.ticks_diff(now, self.t0) < self.n * render.SWEEP_STEP_MS:
                return render.SELFTEST
            self.selftest = False  # once: ticks wrap, so the sweep may not be judged by time alone
        if self.lost:
            return render.HOST_LOST
        return self.p.mode

    def frame(self, now):
        mode = self.shown_mode(now)
        start = self.t0 if mode == render.SELFTEST else self.t_mode
        render.render(self.buf, self.n, mode, time.ticks_diff(now, start), self.p)
        self.hal.write(self.buf)

    def state_text(self):
        from binascii import hexlify

        mode = self.shown_mode(self.hal.ticks_ms())
        return "mode=%s lost=%d px=%s" % (render.mode_name(mode), self.lost_count, hexlify(self.buf).decode())

    def event(self, level, code, text, reliable=True):
        self.link.send(T["EVENT"], (level, code, self.uptime(), text), reliable)

    # --- the host ------------------------------------------------------------

    def on_message(self, t, f):
        self.host_seen(self.hal.ticks_ms())
        if t == _T_PING:
            self.link.send(T["PONG"], (f[0], self.uptime()))
        elif t == _T_HELLO:
            if f[0] == _KIND_HOST:  # a host that came later asks who is there
                self.link.send(_T_HELLO, self.hello)
        elif t == _T_LED_SET:
            mode, r, g, b, bri, period = f
            if mode >= render.N_MODES:
                self.error(t, _ERR_BAD_VALUE, "LED mode %d" % mode)
            elif 0 < period < _PERIOD_MIN_MS:
                self.error(t, _ERR_BAD_VALUE, "period_ms %d" % period)
            else:
                p = self.p
                p.mode, p.r, p.g, p.b, p.brightness, p.period = mode, r, g, b, bri, period
                self.t_mode = self.hal.ticks_ms()
        elif t == _T_LED_GAUGE:
            load, temp = f
            if load > 100:
                self.error(t, _ERR_BAD_VALUE, "load_pct %d" % load)
            elif not _TEMP_MIN_DC <= temp <= _TEMP_MAX_DC:
                self.error(t, _ERR_BAD_VALUE, "temp_dc %d" % temp)
            else:
                self.p.load, self.p.temp = load, temp
        elif t == _T_STATUS_GET:
            self.frame(self.hal.ticks_ms())  # the answer shows the state after this frame's effects
            self.event(_LEVEL_INFO, EV_STATE, self.state_text())
        elif t in _UNSUPPORTED:
            self.error(t, _ERR_UNSUPPORTED, "not an LED message")
        # PONG, STATUS, EVENT, EVENT_LOG, ERROR from the host need no answer

    def error(self, t, code, text):
        self.link.send(T["ERROR"], (code, t, self.link.rx_seq, "bad value: " + text if code == _ERR_BAD_VALUE else text))

    def host_seen(self, now):
        self.last_rx = now
        if self.lost:
            self.lost = False
            self.frame(now)
            log(_LEVEL_INFO, "host back")
            self.event(_LEVEL_INFO, EV_HOST_BACK, self.state_text())

    def watchdog(self, now):
        # Any frame that passed the CRC (an ACK too) proves the host is there.
        frames = self.link.rx_frames()
        if frames != self._frames:
            self._frames = frames
            self.host_seen(now)
        elif not self.lost and time.ticks_diff(now, self.last_rx) >= self.host_timeout_ms:
            self.lost = True
            self.lost_count += 1
            self.t_mode = now  # the host's pattern starts over when it is back
            self.frame(now)
            log(_LEVEL_WARNING, "host lost")
            # Unreliable: its acknowledgement would count as the host being back.
            self.event(_LEVEL_WARNING, EV_HOST_LOST, self.state_text(), False)

    def report_drops(self, now):
        d = self.link.drops
        total = 0
        for r in srp.REASONS:
            total += d[r]
        if total == self._reported or time.ticks_diff(now, self._report_at) < _DROP_REPORT_MS:
            return
        if not self.link.can_send():
            return
        self._reported, self._report_at = total, now
        self.event(_LEVEL_WARNING, EV_DROPS, _drops_text(d))

    # --- tasks ---------------------------------------------------------------

    async def serial_task(self):
        try:
            while True:
                self.link.poll()
                now = self.hal.ticks_ms()
                self.watchdog(now)
                self.report_drops(now)
                await asyncio.sleep_ms(_POLL_MS)
        except (EOFError, OSError):  # the line is gone (the host closed the pty)
            self.running = False

    async def render_task(self):
        nxt = self.hal.ticks_ms()
        while self.running:
            self.frame(self.hal.ticks_ms())
            nxt = time.ticks_add(nxt, _FRAME_MS)
            wait = time.ticks_diff(nxt, self.hal.ticks_ms())
            if wait < 0:  # fell behind: skip frames rather than hurry
                nxt, wait = self.hal.ticks_ms(), 0
            await asyncio.sleep_ms(wait)

    async def run(self):
        r = asyncio.create_task(self.render_task())
        await self.serial_task()
        r.cancel()
