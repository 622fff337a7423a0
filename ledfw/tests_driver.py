# Runs ledfw/render.py under the MicroPython unix port for tests/integration/test_ledfw.py.
#
#   micropython ledfw/tests_driver.py CASE...   (MICROPYPATH: .frozen and ledfw/)
#
# CASE is "mode,t,r,g,b,brightness,period,load,temp,n" (all integers) or "gamma"; a case
# prefixed "lock," is rendered a second time with the heap locked, so that any allocation
# in the render path raises MemoryError (and the driver exits with an error).
# "fw" runs fw.Firmware's frame, watchdog, drop report and an idle link poll on a fake
# HAL, then again with the heap locked, and prints the pixels it wrote.
# "wire,HEX" starts fw.Firmware on a fake line (link seq 0x42), feeds it the bytes HEX,
# polls once and prints everything it wrote, in hex: exact bytes on the wire.
# Prints one line per case: the rendered pixel buffer (or the gamma table) in hex.
import sys
from binascii import hexlify

import micropython
import render

class _Stream:
    def __init__(self):
        self.written = 0
        self.inp = b""
        self.out = bytearray()
        self.keep = False

    def readinto(self, buf):
        n = min(len(buf), len(self.inp))
        if not n:
            return None
        buf[:n] = self.inp[:n]
        self.inp = self.inp[n:]
        return n

    def write(self, data):
        self.written += len(data)
        if self.keep:
            self.out.extend(data)
        return len(data)


class _Hal:
    def __init__(self, stream=None):
        self._stream = stream if stream is not None else _Stream()
        self.n = 8
        self.shown = bytearray(24)
        self.now = 0

    def pixels(self, n):
        return bytearray(3 * n)

    def write(self, buf):
        self.shown[:] = buf

    def ticks_ms(self):
        return self.now

    def unique_id(self):
        return b"drv"

    def serial(self):
        return self._stream


def _fw_case():
    import fw

    hal = _Hal()
    f = fw.Firmware(hal, 8, 1000)
    f.p.mode, f.p.r, f.p.period = render.BLINK, 255, 400
    for step in range(2):
        if step:
            micropython.heap_lock()
        for now in (500, 600, 850):  # past the self-test, the host not yet lost; the blink on at 850
            hal.now = now
            f.frame(now)
            f.watchdog(now)
            f.report_drops(now)
            f.link.poll()
        if step:
            micropython.heap_unlock()
    return hal.shown


def _wire_case(inp):
    import fw

    stream = _Stream()
    stream.keep = True
    hal = _Hal(stream)
    f = fw.Firmware(hal, 8, 1000, seq=0x42)
    stream.inp = inp
    f.link.poll()
    return stream.out


buf = bytearray(3 * 32)
p = render.Params()
for case in sys.argv[1:]:
    if case == "fw":
        print(hexlify(bytes(_fw_case())).decode())
        continue
    if case.startswith("wire,"):
        print(hexlify(bytes(_wire_case(bytes.fromhex(case[5:])))).decode())
        continue
    if case == "gamma":
        print(hexlify(render.GAMMA).decode())
        continue
    lock = case.startswith("lock,")
    v = [int(x) for x in case.split(",")[1 if lock else 0 :]]
    p.mode, p.r, p.g, p.b, p.brightness, p.period, p.load, p.temp = v[0], v[2], v[3], v[4], v[5], v[6], v[7], v[8]
    n = v[9]
    for i in range(len(buf)):
        buf[i] = 0xEE  # render must write every byte of the n pixels
    render.render(buf, n, v[0], v[1], p)
    if lock:
        micropython.heap_lock()
        render.render(buf, n, v[0], v[1], p)
        micropython.heap_unlock()
    print(hexlify(bytes(buf[: 3 * n])).decode())
