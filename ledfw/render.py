# render: the LED patterns, as pure functions of (time, parameters) -> pixel buffer.
#
# No I/O and no clock: the caller passes the time in ms. Each function fills a
# buffer the caller allocated once (3 bytes per pixel, R G B, gamma corrected
# and capped) and allocates nothing. Only integer arithmetic, so every port
# (the RP2040's floats are single precision) produces the same bytes.

from micropython import const

# The enclosure is powered over PoE: no channel ever exceeds 40 % duty.
CAP = const(102)  # 40 % of 255

OFF = const(0)
SOLID = const(1)
BLINK = const(2)
BREATHE = const(3)
GAUGE = const(4)
IDENTIFY = const(5)
ALERT = const(6)
N_MODES = const(7)
# Not LedMode values: what the firmware shows by itself.
HOST_LOST = const(100)
SELFTEST = const(101)

MODE_NAMES = ("OFF", "SOLID", "BLINK", "BREATHE", "GAUGE", "IDENTIFY", "ALERT")

_BLINK_MS = const(1000)  # default periods (LED_SET period_ms 0)
_BREATHE_MS = const(2000)
_ALERT_MS = const(500)
_IDENTIFY_MS = const(250)
_LOST_STEP_MS = const(125)  # host lost: one amber pixel moves one place per step
SWEEP_STEP_MS = const(40)  # self-test: one white pixel per step
_TEMP_WARM_DC = const(500)  # gauge colour bands, in 0.1 degC
_TEMP_HOT_DC = const(700)


def _build_gamma():
    # Gamma 2 in integers, rounded up so that a lit input never renders dark.
    g = bytearray(256)
    for x in range(256):
        g[x] = (x * x + 254) // 255
    return g


GAMMA = _build_gamma()


def level(c, k):
    """Output byte of colour channel c (0..255) at intensity k (0..255): scale, gamma, cap."""
    return GAMMA[c * k // 255] * CAP // 255


class Params:
    """What the host asked for (LED_SET and LED_GAUGE fields); one instance, updated in place."""

    def __init__(self):
        self.mode = OFF
        self.r = self.g = self.b = 0
        self.brightness = 255
        self.period = 0
        self.load = 0  # percent
        self.temp = 0  # 0.1 degC


def fill(buf, n, r, g, b):
    for i in range(0, 3 * n, 3):
        buf[i] = r
        buf[i + 1] = g
        buf[i + 2] = b


def _fill_level(buf, n, p, k):
    fill(buf, n, level(p.r, k), level(p.g, k), level(p.b, k))


def off(buf, n, t, p):
    fill(buf, n, 0, 0, 0)


def solid(buf, n, t, p):
    _fill_level(buf, n, p, p.brightness)


def blink(buf, n, t, p):
    period = p.period or _BLINK_MS
    _fill_level(buf, n, p, p.brightness if t % period < period // 2 else 0)


def triangle(t, period):
    """0 -> 255 -> 0 over one period."""
    half = period // 2
    ph = t % period
    return ph * 255 // half if ph < half else (period - ph) * 255 // (period - half)


def breathe(buf, n, t, p):
    period = p.period or _BREATHE_MS
    if period < 2:
        period = 2
    _fill_level(buf, n, p, p.brightness * triangle(t, period) // 255)


def gauge(buf, n, t, p):
    lit = (p.load * n + 99) // 100  # rounded up: any load lights one pixel
    if p.temp < _TEMP_WARM_DC:
        r, g = 0, 255
    elif p.temp < _TEMP_HOT_DC:
        r, g = 255, 255
    else:
        r, g = 255, 0
    k = p.brightness
    r, g = level(r, k), level(g, k)
    fill(buf, n, 0, 0, 0)
    fill(buf, lit, r, g, 0)


def identify(buf, n, t, p):
    v = level(255, 255) if t % _IDENTIFY_MS < _IDENTIFY_MS // 2 else 0
    fill(buf, n, v, v, v)


def alert(buf, n, t, p):
    # Wig-wag: even pixels in the first half period, odd ones in the second; red unless a colour is given.
    period = p.period or _ALERT_MS
    k = p.brightness
    if p.r or p.g or p.b:
        r, g, b = level(p.r, k), level(p.g, k), level(p.b, k)
    else:
        r, g, b = level(255, k), 0, 0
    odd = 1 if t % period >= period // 2 else 0
    for i in range(n):
        j = 3 * i
        on = (i & 1) == odd
        buf[j] = r if on else 0
        buf[j + 1] = g if on else 0
        buf[j + 2] = b if on else 0


def host_lost(buf, n, t, p):
    # One amber pixel walking along the strip: no host mode looks like it.
    fill(buf, n, 0, 0, 0)
    if n:
        j = 3 * ((t // _LOST_STEP_MS) % n)
        buf[j] = level(255, 255)
        buf[j + 1] = level(96, 255)


def selftest(buf, n, t, p):
    # One white pixel per SWEEP_STEP_MS from the first to the last, then dark.
    fill(buf, n, 0, 0, 0)
    i = t // SWEEP_STEP_MS
    if 0 <= i < n:
        v = level(255, 255)
        buf[3 * i] = buf[3 * i + 1] = buf[3 * i + 2] = v


_BY_MODE = (off, solid, blink, breathe, gauge, identify, alert)


def render(buf, n, mode, t, p):
    """Fill buf[:3 * n] with `mode` (a LedMode, HOST_LOST or SELFTEST) at time t ms."""
    if mode == HOST_LOST:
        host_lost(buf, n, t, p)
    elif mode == SELFTEST:
        selftest(buf, n, t, p)
    else:
        _BY_MODE[mode](buf, n, t, p)


def mode_name(mode):
    if mode == HOST_LOST:
        return "HOST_LOST"
    if mode == SELFTEST:
        return "SELFTEST"
    return MODE_NAMES[mode]
