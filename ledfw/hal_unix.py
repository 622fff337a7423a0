# hal_unix: the LED firmware's hardware on the MicroPython unix port, for tests and demos.
#
# The LEDs are a buffer in memory (`shown` holds the last frame written); the
# serial line is a pty path given at start. The state is observed through the
# protocol (STATUS_GET -> EVENT, see main.py), so nothing here prints.

import time

import srplink

_UID = b"ledfw-ux"  # the unix port has no unique id: a fixed 8 bytes, as on the RP2040


class Hal:
    def __init__(self, tty, n=8):
        self._tty = tty
        self.n = n
        self.shown = bytearray(3 * n)
        self.writes = 0

    def pixels(self, n):
        """A pixel buffer (R G B per pixel) for `n` LEDs, allocated once by the caller."""
        return bytearray(3 * n)

    def write(self, buf):
        self.shown[:] = buf
        self.writes += 1

    def ticks_ms(self):
        return time.ticks_ms()

    def unique_id(self):
        return _UID

    def serial(self):
        return srplink.PtyStream(self._tty)
