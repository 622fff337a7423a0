# demo_peer: a device-side peer on the unix port, for the demo and the tests.
#
#   micropython demo_peer.py /dev/pts/N [kind]
#
# Says HELLO (reliably, opening its session with SYN), answers PING with PONG,
# obeys LED_SET / LED_GAUGE / POWER / STATUS_GET (with an EVENT or a STATUS),
# echoes CONSOLE_DATA on the same port and reports link drops as an EVENT.
# It runs until the other side of the pty closes, then prints its counters.

import sys
import time

try:
    import srplink
except ImportError:  # run from the source tree: layouts.py is one directory up
    _here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    sys.path.append(_here)
    sys.path.append(_here + "/..")
    import srplink

import srp

FW = (0, 1, 0)
T = srp.TYPE_IDS
_LEVEL_INFO = 1
_LEVEL_WARNING = 2
_EV_LED = 0x0101
_EV_POWER = 0x0102
_EV_DROPS = 0x0200
_ERR_BAD_VALUE = 3
_MODES = ("OFF", "SOLID", "BLINK", "BREATHE", "GAUGE", "IDENTIFY", "ALERT")
_POWER_STATE_FOR_ACTION = (0, 1, 1, 1)  # OFF -> OFF, ON/CYCLE/RESET -> ON once done
_DROP_REPORT_MS = 200
_LINK_REASONS = ("cobs", "short", "oversize", "crc", "length", "version", "flags")


def _uid():
    try:
        import machine

        return machine.unique_id()
    except (ImportError, AttributeError):  # the unix port has no unique id
        import os

        return os.urandom(8)


class Peer:
    def __init__(self, stream, kind):
        self.t0 = time.ticks_ms()
        self.link = srplink.Link(stream, on_message=self.on_message, name="demo")
        self.consoles = {}
        self.console_lost = 0  # echo bytes that found the console buffer full
        self.power = 0
        self.led = (0, 0, 0, 0, 0, 0)
        self.gauge = (0, 0)
        self._reported = 0
        self._report_at = self.t0
        self.link.send(T["HELLO"], (kind, 1) + FW + (_uid(),))

    def uptime(self):
        return time.ticks_diff(time.ticks_ms(), self.t0) & 0xFFFFFFFF

    def event(self, level, code, text):
        self.link.send(T["EVENT"], (level, code, self.uptime(), text))

    def status(self):
        on = self.power == 1
        self.link.send(T["STATUS"], (self.power, 5080 if on else 0, 1200 if on else 0, 6096 if on else 0, 421))

    def console(self, port):
        c = self.consoles.get(port)
        if c is None:
            c = self.consoles[port] = srplink.Console(self.link, port, 4096)
        return c

    def on_message(self, t, f):
        if t == T["PING"]:
            self.link.send(T["PONG"], (f[0], self.uptime()))
        elif t == T["CONSOLE_DATA"]:
            self.console_lost += len(f[1]) - self.console(f[0]).write(f[1])
        elif t == T["LED_SET"]:
            if f[0] >= len(_MODES):
                self.error(t, "LED mode %d" % f[0])
            else:
                self.led = f
                self.event(_LEVEL_INFO, _EV_LED, "led %s rgb=%d,%d,%d" % (_MODES[f[0]], f[1], f[2], f[3]))
        elif t == T["LED_GAUGE"]:
            self.gauge = f  # telemetry: shown, not answered
        elif t == T["POWER"]:
            if f[0] >= len(_POWER_STATE_FOR_ACTION):
                self.error(t, "power action %d" % f[0])
            else:
                self.power = _POWER_STATE_FOR_ACTION[f[0]]
                self.status()
        elif t == T["STATUS_GET"]:
            self.status()
        # HELLO, PONG, STATUS, EVENT, ERROR from the host need no answer

    def error(self, t, text):
        self.link.send(T["ERROR"], (_ERR_BAD_VALUE, t, self.link.rx_seq, "bad value: " + text))

    def report_drops(self):
        # Bad input is counted by the link; tell the host, at most every _DROP_REPORT_MS.
        d = self.link.drops
        total = 0
        for r in _LINK_REASONS:
            total += d[r]
        now = time.ticks_ms()
        if total == self._reported or time.ticks_diff(now, self._report_at) < _DROP_REPORT_MS:
            return
        if not self.link.can_send():
            return
        self._reported, self._report_at = total, now
        text = "drops " + " ".join("%s=%d" % (r, d[r]) for r in _LINK_REASONS if d[r])
        self.event(_LEVEL_WARNING, _EV_DROPS, text)

    def run(self, stream):
        while True:
            self.link.poll()
            self.report_drops()
            stream.wait(self.link.idle_ms(50))


def main():
    if len(sys.argv) < 2:
        print("usage: demo_peer.py TTY [kind]")
        sys.exit(2)
    stream = srplink.PtyStream(sys.argv[1])
    peer = Peer(stream, int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    try:
        peer.run(stream)
    except (EOFError, OSError):  # the host closed the line: a normal end
        pass
    link = peer.link
    counts = " ".join("%s=%d" % (k, v) for k, v in sorted(link.drops.items()) if v)
    print("demo_peer: line closed; drops: %s; retransmits=%d console_lost=%d"
          % (counts or "none", link.retransmits, peer.console_lost))
    stream.close()


main()
