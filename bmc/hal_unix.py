# hal_unix: the BMC's hardware on the MicroPython unix port, for tests and demos.
#
#   micropython main.py LINK_TTY [NODE_TTY] [name=value ...]
#
# The host link is a tty (a pty's slave side). The node's UART is a second tty if
# given (a test types into it as the node and reads what the host sent), else an
# in-memory one. Pins drive sim.Board, whose I2C registers follow the rail.
# name=value settings: power.Config fields (min_off_ms=300), status_ms (send STATUS
# unreliably every so often), node_baud (the in-memory UART transmits at that rate,
# as machine.UART does; 0: at once), rto_max (the link's retransmission ceiling,
# ms) and the board's rail_mv / load_ma / temp_dc
# (rail_mv=3000 gives a rail that never comes good).

import os
import sys
import time

import sim
import srplink

_BOARD_KEYS = ("rail_mv", "load_ma", "temp_dc")


class MemoryUart:
    """The node's UART when no tty is given; it reads nothing. With `baud`, write() behaves as
    machine.UART(timeout=0) on the RP2040: a transmit buffer of `txbuf` bytes drains at baud / 10
    bytes per second and takes only what fits (None when nothing did). `written` counts what it took."""

    def __init__(self, baud=0, txbuf=256):
        self.baud = baud
        self.txbuf = txbuf
        self.written = 0
        self._queued = 0  # bytes in the transmit buffer
        self._t = time.ticks_us()  # when the buffer was last drained

    def readinto(self, buf):
        return None

    def _drain(self):
        now = time.ticks_us()
        gone = time.ticks_diff(now, self._t) * self.baud // 10_000_000
        if gone >= self._queued:
            self._queued, self._t = 0, now
        elif gone:
            self._queued -= gone
            self._t = time.ticks_add(self._t, gone * 10_000_000 // self.baud)

    def write(self, data):
        n = len(data)
        if self.baud:
            self._drain()
            room = self.txbuf - self._queued
            if n > room:
                n = room
            if not n:
                return None
            self._queued += n
        self.written += n
        return n


class Hal:
    name = "unix"

    def __init__(self, argv):
        paths = [a for a in argv if "=" not in a]
        settings = {}
        for a in argv:
            if "=" in a:
                k, v = a.split("=", 1)
                settings[k] = int(v)
        if not paths:
            raise ValueError("usage: main.py LINK_TTY [NODE_TTY] [name=value ...]")
        self.link_stream = srplink.PtyStream(paths[0])
        node_baud = settings.pop("node_baud", 0)
        self.uart = srplink.PtyStream(paths[1]) if len(paths) > 1 else MemoryUart(node_baud)
        self.board = sim.Board(**{k: settings.pop(k) for k in _BOARD_KEYS if k in settings})
        self.i2c = self.board.i2c
        self.status_ms = settings.pop("status_ms", 0)  # unsolicited STATUS period (0: only on request)
        # srplink.Link's retransmission ceiling (ms): a test may let the link give its peer up sooner
        self.link_config = {"rto_max": settings.pop("rto_max")} if "rto_max" in settings else {}
        self.power_config = settings  # the rest: power.Config keywords
        self._now = 0

    def set_pin(self, pin, value):
        self.board.set_pin(pin, value, self._now)

    def tick(self, now):
        self._now = now
        self.board.update(now)

    def uid(self):
        return os.urandom(8)

    def reset_cause(self):
        return None  # a process start, not a reset

    def feed_watchdog(self):
        pass

    def close(self):
        self.link_stream.close()
        if hasattr(self.uart, "close"):
            self.uart.close()


def make():
    return Hal(sys.argv[1:])
