# main: the BMC firmware of one Scalenode.
#
# One asyncio loop, three tasks: the link (read, answer, send what waits, never
# blocking on the line), the power control (sensors -> power.Power.step -> pins
# and events, every 10 ms) and the node's console UART. The decisions live in
# power.py, eventlog.py and console.py; this file only moves data between them,
# the HAL and the link.

import sys
import time

import asyncio
from micropython import const

import console
import eventlog
import power
import sensors
import srp
import srplink

FW = (0, 1, 0)
T = srp.TYPE_IDS
_KIND_BMC = const(2)
_KIND_HOST = const(0)
_PROTO = const(1)
_ERR_BAD_VALUE = const(3)
_ERR_BUSY = const(4)

# Event codes of this file (power.py has 0x0110..0x0116).
EV_BOOT = const(0x0100)
EV_WATCHDOG = const(0x0101)
EV_CONSOLE_DROP = const(0x0120)
EV_CONSOLE_CLOSED = const(0x0121)
EV_SENSOR = const(0x0122)
EV_CONSOLE_NODE_DROP = const(0x0123)
EV_CONSOLE_UNACKED = const(0x0124)
EV_LINK_DROPS = const(0x0200)

_CONTROL_MS = const(10)
_CONSOLE_MS = const(5)
_LINK_MS = const(2)
_DROP_REPORT_MS = const(200)
_MAX_REPLIES = const(16)
_LINK_REASONS = ("cobs", "short", "oversize", "crc", "length", "version", "flags", "unknown_type", "body")


def _clamp(v, lo, hi):
    return lo if v < lo else hi if v > hi else v


class Bmc:
    def __init__(self, hal, log_size=64):
        self.hal = hal
        self._ticks = time.ticks_ms()
        self.uptime = 0  # ms since start, kept monotonic across ticks_ms wrapping
        self.log = eventlog.EventLog(log_size)
        self.live = eventlog.Reader(self.log, self.log.next)  # events still to send as EVENT
        self.query = None  # the EVENT_LOG_GET being answered
        self.replies = []  # answers that found the window full
        self.replies_lost = 0
        self.power = power.Power(power.Config(**hal.power_config), 0)
        self.ina = sensors.Ina226(hal.i2c)
        self.tmp = sensors.Tmp102(hal.i2c)
        self.rail_mv = 0
        self._sensor_ok = True
        self._drops_reported = 0
        self._console_lost = 0
        self._drops_at = 0
        self._status_at = 0
        self.running = True
        self.link = srplink.Link(hal.link_stream, on_message=self.on_message, name="host",
                                 **getattr(hal, "link_config", {}))
        self.hello = (_KIND_BMC, _PROTO) + FW + (hal.uid(),)
        self.link.send(T["HELLO"], self.hello)
        self.console = console.ConsoleBridge(hal.uart, self._send_console)
        self.event(power.INFO, EV_BOOT, "bmc %d.%d.%d up on %s" % (FW + (hal.name,)))
        cause = hal.reset_cause()
        if cause:
            self.event(power.WARNING, EV_WATCHDOG, cause)
        try:
            self.ina.init()
        except OSError as e:
            self._sensor_failed(e)

    # --- time and events -------------------------------------------------------

    def now(self):
        t = time.ticks_ms()
        self.uptime += time.ticks_diff(t, self._ticks)
        self._ticks = t
        return self.uptime

    def event(self, level, code, text):
        self.log.log(level, code, self.uptime, text)

    def _sensor_failed(self, e):
        if self._sensor_ok:
            self._sensor_ok = False
            self.event(power.ERROR, EV_SENSOR, "rail monitor: %r" % (e,))

    # --- power -----------------------------------------------------------------

    def read_rail(self):
        try:
            self.rail_mv = self.ina.bus_mv()
            self._sensor_ok = True
        except OSError as e:  # an unreadable rail counts as a rail that is not good
            self._sensor_failed(e)
            self.rail_mv = 0
        return self.rail_mv

    def power_step(self, action=power.NO_ACTION):
        now = self.now()
        self.hal.tick(now)
        pins, events = self.power.step(now, action, self.read_rail())
        for pin, value in pins:
            self.hal.set_pin(pin, value)
        refused = None
        for level, code, text in events:
            self.event(level, code, text)
            if code == power.EV_REFUSED:
                refused = text
        return refused

    def status(self):
        self.hal.tick(self.now())
        self.read_rail()
        try:
            current = self.ina.current_ma()
            mw = self.ina.power_mw()
            temp = self.tmp.temp_dc()
        except OSError as e:
            self._sensor_failed(e)
            current = mw = temp = 0
        return (self.power.state, _clamp(self.rail_mv, 0, 0xFFFF), _clamp(current, 0, 0xFFFF),
                _clamp(mw, 0, 0xFFFFFFFF), _clamp(temp, -32768, 32767))

    # --- messages from the host ------------------------------------------------

    def reply(self, type_id, fields):
        if self.replies or not self.link.send(type_id, fields):
            if len(self.replies) >= _MAX_REPLIES:
                self.replies_lost += 1
                return
            self.replies.append((type_id, fields))

    def error(self, code, type_id, text):
        self.reply(T["ERROR"], (code, type_id, self.link.rx_seq, text))

    def on_message(self, t, f):
        if t == T["PING"]:
            self.reply(T["PONG"], (f[0], self.uptime & 0xFFFFFFFF))
        elif t == T["HELLO"]:
            if f[0] == _KIND_HOST:  # a host that came later asks who is there
                self.reply(T["HELLO"], self.hello)
        elif t == T["POWER"]:
            if f[0] >= len(power.ACTION_NAMES):
                self.error(_ERR_BAD_VALUE, t, "bad value: power action %d" % f[0])
                return
            refused = self.power_step(f[0])
            if refused:
                self.error(_ERR_BUSY, t, refused)
        elif t == T["BOOT_MODE"]:
            if f[0] >= len(power.BOOT_MODE_NAMES):
                self.error(_ERR_BAD_VALUE, t, "bad value: boot mode %d" % f[0])
                return
            self.event(*self.power.select_boot_mode(f[0]))
        elif t == T["STATUS_GET"]:
            self.reply(T["STATUS"], self.status())
        elif t == T["EVENT_LOG_GET"]:
            self.query = eventlog.Reader(self.log, f[0])
        elif t == T["CONSOLE_DATA"]:
            if f[0] != console.PORT:
                self.error(_ERR_BAD_VALUE, t, "bad value: console port %d" % f[0])
                return
            self.console.from_host(f[1])
        # PONG, EVENT, ERROR from the host need no answer

    # --- what waits for the window, most important first ------------------------

    def _send_console(self, fields):
        return self.link.send(T["CONSOLE_DATA"], fields)

    def pump(self):
        link = self.link
        while self.replies and link.send(*self.replies[0]):
            self.replies.pop(0)
        if self.replies:
            return
        while self.query is not None and link.can_send():
            e = self.query.take()
            nxt = self.log.next
            if e is None:
                link.send(T["EVENT_LOG"], (nxt, nxt, 0, 0, 0, ""))  # the end marker
                self.query = None
            else:
                link.send(T["EVENT_LOG"], (e[0], nxt) + e[1:])
        while link.can_send() and self.live.pending():
            e = self.live.take()
            link.send(T["EVENT"], e[1:])
        self.console.pump()

    def report_drops(self):
        # Bad input is counted by the link; log it, at most every _DROP_REPORT_MS.
        d = self.link.drops
        total = 0
        for r in _LINK_REASONS:
            total += d[r]
        if total == self._drops_reported or self.uptime - self._drops_at < _DROP_REPORT_MS:
            return
        self._drops_reported, self._drops_at = total, self.uptime
        self.event(power.WARNING, EV_LINK_DROPS,
                   "link drops " + " ".join("%s=%d" % (r, d[r]) for r in _LINK_REASONS if d[r]))

    def periodic_status(self):
        # Telemetry: unreliable (never held in the window, never resent), every hal.status_ms.
        if self.hal.status_ms and self.uptime - self._status_at >= self.hal.status_ms:
            self._status_at = self.uptime
            self.link.send(T["STATUS"], self.status(), reliable=False)

    # --- tasks -----------------------------------------------------------------

    async def control_task(self):
        while self.running:
            self.power_step()
            n = self.link.console_lost - self._console_lost
            if n:  # the link gave the host up with console data unacknowledged: it may or may not arrive
                self._console_lost += n
                self.event(power.WARNING, EV_CONSOLE_UNACKED,
                           "host given up with %d console bytes unacknowledged (total %d)" % (n, self._console_lost))
            n = self.console.take_drops()
            if n:
                self.event(power.WARNING, EV_CONSOLE_DROP,
                           "console dropped %d bytes (total %d)" % (n, self.console.dropped))
            n = self.console.take_node_drops()
            if n:
                self.event(power.WARNING, EV_CONSOLE_NODE_DROP,
                           "console dropped %d bytes for the node (total %d)" % (n, self.console.node_dropped))
            self.report_drops()
            self.periodic_status()
            self.hal.feed_watchdog()
            await asyncio.sleep_ms(_CONTROL_MS)

    async def console_task(self):
        while self.running:
            try:
                self.console.poll_uart()
                self.console.flush_node()
            except (EOFError, OSError):
                self.event(power.WARNING, EV_CONSOLE_CLOSED, "node console closed")
                return
            await asyncio.sleep_ms(_CONSOLE_MS)

    async def link_task(self):
        try:
            while True:
                self.link.poll()
                self.pump()
                await asyncio.sleep_ms(_LINK_MS)
        except (EOFError, OSError):  # the host side of the line is gone (unix port)
            self.running = False

    async def run(self):
        tasks = [asyncio.create_task(self.control_task()), asyncio.create_task(self.console_task())]
        await self.link_task()
        for task in tasks:
            task.cancel()

    def counters(self):
        d = self.link.drops
        drops = " ".join("%s=%d" % (k, d[k]) for k in sorted(d) if d[k])
        c = self.console
        return ("drops: %s; retransmits=%d peer_lost=%d console_dropped=%d console_unacked=%d node_dropped=%d"
                " node_pending=%d to_host=%d to_node=%d replies_lost=%d") % (
            drops or "none", self.link.retransmits, self.link.peer_lost, c.dropped, self.link.console_lost,
            c.node_dropped, c.node_pending(), c.to_host, c.to_node, self.replies_lost)


def main():
    if sys.platform == "rp2":
        import hal_rp2 as hal_mod
    else:
        import hal_unix as hal_mod
    hal = hal_mod.make()
    bmc = Bmc(hal)
    asyncio.run(bmc.run())
    print("bmc: line closed;", bmc.counters())
    hal.close()


main()
