# Runs ledfw/render.py under the MicroPython unix port for tests/integration/test_ledfw.py.
#
#   micropython ledfw/tests_driver.py CASE...   (MICROPYPATH: .frozen and ledfw/)
#
# CASE is "mode,t,r,g,b,brightness,period,load,temp,n" (all integers) or "gamma".
# Prints one line per case: the rendered pixel buffer (or the gamma table) in hex.
import sys
from binascii import hexlify

import render

buf = bytearray(3 * 32)
p = render.Params()
for case in sys.argv[1:]:
    if case == "gamma":
        print(hexlify(render.GAMMA).decode())
        continue
    v = [int(x) for x in case.split(",")]
    p.mode, p.r, p.g, p.b, p.brightness, p.period, p.load, p.temp = v[0], v[2], v[3], v[4], v[5], v[6], v[7], v[8]
    n = v[9]
    for i in range(len(buf)):
        buf[i] = 0xEE  # render must write every byte of the n pixels
    render.render(buf, n, v[0], v[1], p)
    print(hexlify(bytes(buf[: 3 * n])).decode())
