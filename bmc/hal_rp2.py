# hal_rp2: the BMC's hardware on an RP2040 board.
#
# Host link on UART0 (GP0/GP1), the node's console on UART1 (GP4/GP5), the rail
# monitor and temperature sensor on I2C0 (GP8/GP9). Output lines: rail enable
# GP10, node reset GP11 (through an open-drain buffer: 1 = reset asserted),
# node power button GP12 (1 = pressed), boot-mode select GP13 (bit 0) and GP14 (bit 1).

import machine
from micropython import const

_LINK_BAUD = const(1000000)
_NODE_BAUD = const(115200)
_WDT_MS = const(2000)


class Hal:
    name = "rp2"

    def __init__(self):
        self.link_stream = machine.UART(0, _LINK_BAUD, tx=machine.Pin(0), rx=machine.Pin(1),
                                        rxbuf=2048, txbuf=2048, timeout=0)
        self.uart = machine.UART(1, _NODE_BAUD, tx=machine.Pin(4), rx=machine.Pin(5), rxbuf=2048, timeout=0)
        self.i2c = machine.I2C(0, scl=machine.Pin(9), sda=machine.Pin(8), freq=400000)
        out = machine.Pin.OUT
        self._rail = machine.Pin(10, out, value=0)
        self._reset = machine.Pin(11, out, value=0)
        self._button = machine.Pin(12, out, value=0)
        self._boot = (machine.Pin(13, out, value=0), machine.Pin(14, out, value=0))
        self.power_config = {}
        self.status_ms = 1000  # unsolicited STATUS, unreliable: telemetry for the host
        self._cause = machine.reset_cause()
        self._wdt = machine.WDT(timeout=_WDT_MS)

    def set_pin(self, pin, value):
        if pin == 0:
            self._rail.value(value)
        elif pin == 1:
            self._reset.value(value)
        elif pin == 2:
            self._button.value(value)
        elif pin == 3:
            self._boot[0].value(value & 1)
            self._boot[1].value((value >> 1) & 1)

    def tick(self, now):
        pass

    def uid(self):
        return machine.unique_id()

    def reset_cause(self):
        if self._cause == machine.WDT_RESET:
            return "watchdog reset"
        return None

    def feed_watchdog(self):
        self._wdt.feed()

    def close(self):
        pass


def make():
    return Hal()
