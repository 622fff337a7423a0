# hal_rp2: the LED firmware's hardware on the RP2040.
#
# Either a WS2812 strip (neopixel on one pin) or discrete RGB LEDs, each driven by
# three PWM pins (common cathode: duty follows the channel value), like the
# light-guide board of 5 RGB LEDs. The serial line is a UART that never blocks
# (timeout 0: readinto returns None when idle). Pin numbers are the enclosure
# board's; see ledfw/README.md. An optional `ledboard.py` beside main.py picks
# the LEDs (`scalerunner fw deploy ledfw --leds ...` writes it): N and STRIP_PIN
# for a strip, or RGB_PINS, one (r, g, b) triple of pins per LED.

import machine
from micropython import const

_STRIP_PIN = const(16)
_UART_ID = const(0)
_UART_TX = const(0)
_UART_RX = const(1)
_BAUD = const(115200)
_PWM_HZ = const(1000)

# The light-guide board: 5 LEDs on 15 PWM outputs, no two on one slice channel
# (GP16 shares slice 0 with the UART's GP0/GP1, which are not PWM outputs then).
LIGHT_GUIDE = ((2, 3, 4), (5, 6, 7), (8, 9, 10), (11, 12, 13), (14, 15, 16))


def pwm_channel(pin):
    """The RP2040 PWM (slice, channel) a GPIO drives: two pins on one of them show the same duty."""
    return (pin >> 1) & 7, pin & 1


def check_rgb_pins(rgb_pins):
    seen: dict = {}  # (slice, channel) -> the pin on it
    for led, trio in enumerate(rgb_pins):
        if len(trio) != 3:
            raise ValueError("LED %d: %d pins, not 3 (r, g, b)" % (led, len(trio)))
        for pin in trio:
            ch = pwm_channel(pin)
            if ch in seen:
                raise ValueError("GP%d and GP%d share PWM slice %d channel %s" % (
                    seen[ch], pin, ch[0], "AB"[ch[1]]))
            seen[ch] = pin


class Hal:
    def __init__(self, n=8, strip_pin=_STRIP_PIN, rgb_pins=None):
        self.n = n
        self._np = None
        self._pwm = None
        if rgb_pins is None:
            import neopixel

            self._np = neopixel.NeoPixel(machine.Pin(strip_pin, machine.Pin.OUT), n)
        else:
            check_rgb_pins(rgb_pins)
            self.n = len(rgb_pins)
            # flat, R G B per LED: the pixel buffer's own order
            self._pwm = [machine.PWM(machine.Pin(p), freq=_PWM_HZ) for trio in rgb_pins for p in trio]

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
            pwm = self._pwm
            for j in range(len(pwm)):
                pwm[j].duty_u16(buf[j] * 257)  # 0..255 -> 0..65535

    def ticks_ms(self):
        import time

        return time.ticks_ms()

    def unique_id(self):
        return machine.unique_id()

    def serial(self):
        return machine.UART(_UART_ID, baudrate=_BAUD, tx=machine.Pin(_UART_TX), rx=machine.Pin(_UART_RX),
                            timeout=0)


def make():
    """The board as `ledboard.py` describes it, else a strip of 8 on GP16."""
    try:
        import ledboard  # type: ignore[import-not-found]  # written by `fw deploy --leds`, optional
    except ImportError:
        return Hal()
    return Hal(getattr(ledboard, "N", 8), getattr(ledboard, "STRIP_PIN", _STRIP_PIN),
               getattr(ledboard, "RGB_PINS", None))
