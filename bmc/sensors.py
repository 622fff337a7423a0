# sensors: drivers for the rail monitor (INA226) and the board temperature (TMP102).
#
# Both talk to an I2C object with machine.I2C's memory interface
# (readfrom_mem_into / writeto_mem); registers are 16-bit big-endian.
# The buffers are allocated once per driver.

from micropython import const

# INA226 registers
_INA_CONFIG = const(0x00)
_INA_SHUNT = const(0x01)  # LSB 2.5 uV, signed
_INA_BUS = const(0x02)  # LSB 1.25 mV
_INA_POWER = const(0x03)  # LSB 25 x current LSB
_INA_CURRENT = const(0x04)  # LSB current_lsb, signed
_INA_CAL = const(0x05)
# 16 averages, 1.1 ms conversions, shunt and bus continuous (datasheet table 6: AVG=010, VBUSCT=VSHCT=100)
INA_CONFIG = const(0x4527)

# TMP102 registers
_TMP_TEMP = const(0x00)  # 12-bit, left-justified, 0.0625 degC per LSB


def _signed16(v):
    return v - 0x10000 if v & 0x8000 else v


class Ina226:
    """Bus voltage, current and power of one rail.

    current_lsb_ua is the current register's LSB in microamperes; the calibration
    register is 0.00512 / (current_lsb * R_shunt), i.e. 5_120_000 / (lsb_ua * shunt_mohm).
    """

    def __init__(self, i2c, addr=0x40, shunt_mohm=10, current_lsb_ua=1000):
        self.i2c = i2c
        self.addr = addr
        self.lsb_ua = current_lsb_ua
        self.cal = 5120000 // (current_lsb_ua * shunt_mohm)
        if not 0 < self.cal < 0x8000:
            raise ValueError("calibration out of range")
        self._buf = bytearray(2)

    def _write(self, reg, value):
        self._buf[0] = value >> 8
        self._buf[1] = value & 0xFF
        self.i2c.writeto_mem(self.addr, reg, self._buf)

    def _read(self, reg):
        self.i2c.readfrom_mem_into(self.addr, reg, self._buf)
        return (self._buf[0] << 8) | self._buf[1]

    def init(self):
        self._write(_INA_CONFIG, INA_CONFIG)
        self._write(_INA_CAL, self.cal)

    def bus_mv(self):
        return self._read(_INA_BUS) * 5 // 4

    def shunt_uv(self):
        return _signed16(self._read(_INA_SHUNT)) * 5 // 2

    def current_ma(self):
        return _signed16(self._read(_INA_CURRENT)) * self.lsb_ua // 1000

    def power_mw(self):
        return self._read(_INA_POWER) * 25 * self.lsb_ua // 1000


class Tmp102:
    def __init__(self, i2c, addr=0x48):
        self.i2c = i2c
        self.addr = addr
        self._buf = bytearray(2)

    def temp_dc(self):
        """Temperature in 0.1 degC (rounded towards minus infinity)."""
        self.i2c.readfrom_mem_into(self.addr, _TMP_TEMP, self._buf)
        raw = _signed16((self._buf[0] << 8) | self._buf[1]) >> 4  # 12-bit two's complement
        return (raw * 10) >> 4  # 0.0625 degC = 0.625 dC per LSB
