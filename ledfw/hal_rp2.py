# hal_rp2: the LED firmware's hardware on the RP2040.
#
# Either a WS2812 strip (neopixel on one pin) or one discrete RGB LED driven by
# three PWM pins (common cathode: duty follows the channel value). The serial
# line is a UART that never blocks (timeout 0: readinto returns None when idle).
# Pin numbers are the enclosure board's; see ledfw/README.md.

import machine
from micropython import const

_STRIP_PIN = const(16)
_UART_ID = const(0)
_UART_TX = const(0)
_UART_RX = const(1)
_BAUD = const(115200)
_PWM_HZ = const(1000)


class Hal:
    def __init__(self, n=8, strip_pin=_STRIP_PIN, rgb_pins=None):
        self.n = n
        self._np = None
        self._pwm = None
        if rgb_pins is None:
            import neopixel

            self._np = neopixel.NeoPixel(machine.Pin(strip_pin, machine.Pin.OUT), n)
        else:
            self._pwm = [machine.PWM(machine.Pin(p), freq=_PWM_HZ) for p in rgb_pins]

    def pixels(self, n):
        return bytearray(3 * n)

    def write(self, buf):
        if self._np is not None:
            out = self._np.buf  # the strip's own GRB buffer: filled in place, no tuples
            for j in range(0, 3 * self.n, 3):
                out[j] = buf[j + 1]
                out[j + 1] = buf[j]
                out[j + 2] = buf[j + 2]
            self._np.write()
        elif self._pwm is not None:
            for c in range(3):  # discrete LED: the first pixel
                self._pwm[c].duty_u16(buf[c] * 257)

    def ticks_ms(self):
        import time

        return time.ticks_ms()

    def unique_id(self):
        return machine.unique_id()

    def serial(self):
        return machine.UART(_UART_ID, baudrate=_BAUD, tx=machine.Pin(_UART_TX), rx=machine.Pin(_UART_RX),
                            timeout=0)
