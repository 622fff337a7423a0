# sim: the node's board as the unix HAL sees it: an in-memory I2C bus with an
# INA226 and a TMP102 whose registers follow the rail-enable line.
#
# The INA226 model computes current and power from the shunt voltage and the
# calibration register the way the chip does (datasheet equations 3 and 4), so a
# driver that writes a wrong calibration reads wrong values here too.

from micropython import const

INA_ADDR = const(0x40)
TMP_ADDR = const(0x48)


class Chip:
    """16-bit big-endian registers, as machine.I2C's memory interface sees them."""

    def __init__(self):
        self.regs = {}

    def read(self, reg):
        return self.regs.get(reg, 0)

    def write(self, reg, value):
        self.regs[reg] = value


class Ina226Model(Chip):
    def __init__(self):
        super().__init__()
        self.bus_mv = 0
        self.current_ma = 0
        self.shunt_mohm = 10

    def read(self, reg):
        shunt_raw = self.current_ma * self.shunt_mohm * 2 // 5  # uV / 2.5
        bus_raw = self.bus_mv * 4 // 5  # mV / 1.25
        cal = self.regs.get(5, 0)
        current = shunt_raw * cal // 2048
        if reg == 1:
            return shunt_raw & 0xFFFF
        if reg == 2:
            return bus_raw
        if reg == 3:
            return current * bus_raw // 20000
        if reg == 4:
            return current & 0xFFFF
        return self.regs.get(reg, 0)


class I2C:
    """machine.I2C's memory interface over a dict of chips; an absent address raises OSError(ENODEV)."""

    def __init__(self, chips):
        self.chips = chips

    def _chip(self, addr):
        chip = self.chips.get(addr)
        if chip is None:
            raise OSError(19)
        return chip

    def readfrom_mem_into(self, addr, reg, buf):
        v = self._chip(addr).read(reg)
        buf[0] = (v >> 8) & 0xFF
        buf[1] = v & 0xFF

    def writeto_mem(self, addr, reg, buf):
        self._chip(addr).write(reg, (buf[0] << 8) | buf[1])


class Board:
    """The rail follows its enable line with a rise and fall time; the load draws current when on."""

    def __init__(self, rail_mv=5080, load_ma=1200, temp_dc=421, rise_ms=30, fall_ms=20):
        self.rail_mv = rail_mv  # what the rail settles at when on (set low to simulate a failing supply)
        self.load_ma = load_ma
        self.rise_ms = rise_ms
        self.fall_ms = fall_ms
        self.ina = Ina226Model()
        self.tmp = Chip()
        self.set_temp_dc(temp_dc)
        self.i2c = I2C({INA_ADDR: self.ina, TMP_ADDR: self.tmp})
        self.rail_en = 0
        self.changed = 0
        self.pins = [0, 0, 0, 0]

    def set_temp_dc(self, dc):
        raw = (dc * 16 + 5) // 10  # 0.0625 degC LSB
        self.tmp.regs[0] = (raw << 4) & 0xFFFF

    def set_pin(self, pin, value, now):
        self.pins[pin] = value
        if pin == 0 and value != self.rail_en:
            self.rail_en = value
            self.changed = now

    def update(self, now):
        settled = now - self.changed >= (self.rise_ms if self.rail_en else self.fall_ms)
        if self.rail_en:
            self.ina.bus_mv = self.rail_mv if settled else self.rail_mv // 2
            self.ina.current_ma = self.load_ma if settled else 0
        else:
            self.ina.bus_mv = 0 if settled else self.ina.bus_mv // 2
            self.ina.current_ma = 0
