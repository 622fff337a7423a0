# hal_unix: the BMC's hardware on the MicroPython unix port, for tests and demos.
#
#   micropython main.py LINK_TTY [NODE_TTY] [name=value ...]
#
# The host link is a tty (a pty's slave side). The node's UART is a second tty if
# given (a test types into it as the node and reads what the host sent), else an
# in-memory buffer. Pins drive sim.Board, whose I2C registers follow the rail.
# name=value settings: power.Config fields (min_off_ms=300), status_ms (send STATUS
# unreliably every so often) and the board's rail_mv / load_ma / temp_dc
# (rail_mv=3000 gives a rail that never comes good).

import os
import sys

import sim
import srplink

_BOARD_KEYS = ("rail_mv", "load_ma", "temp_dc")


class MemoryUart:
    """The node's UART when no tty is given: what the host sends piles up in `sent`."""

    def __init__(self):
        self.sent = bytearray()

    def readinto(self, buf):
        return None

    def write(self, data):
        self.sent += data
        return len(data)


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
        self.uart = srplink.PtyStream(paths[1]) if len(paths) > 1 else MemoryUart()
        self.board = sim.Board(**{k: settings.pop(k) for k in _BOARD_KEYS if k in settings})
        self.i2c = self.board.i2c
        self.status_ms = settings.pop("status_ms", 0)  # unsolicited STATUS period (0: only on request)
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
