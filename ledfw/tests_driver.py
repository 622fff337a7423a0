# Runs ledfw/render.py under the MicroPython unix port for tests/integration/test_ledfw.py.
#
#   micropython ledfw/tests_driver.py CASE...   (MICROPYPATH: .frozen and ledfw/)
#
# CASE is "mode,t,r,g,b,brightness,period,load,temp,n" (all integers) or "gamma"; a case
# prefixed "lock," is rendered a second time with the heap locked, so that any allocation
# in the render path raises MemoryError (and the driver exits with an error).
# Prints one line per case: the rendered pixel buffer (or the gamma table) in hex.
import sys
from binascii import hexlify

import micropython
import render

buf = bytearray(3 * 32)
p = render.Params()
for case in sys.argv[1:]:
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
