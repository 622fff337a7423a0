# ledfw main: the LED indicator firmware's entry point (ledfw/README.md).
#
#   micropython main.py TTY [HOST_TIMEOUT_MS]     (unix port: hal_unix on a pty)
#   main.py on the RP2040 runs with no arguments  (hal_rp2 on UART0)

import asyncio
import sys

import fw


def main():
    if sys.platform == "rp2":
        import hal_rp2

        hal = hal_rp2.make()
        timeout = fw.HOST_TIMEOUT_MS
    else:
        if len(sys.argv) < 2:
            print("usage: main.py TTY [HOST_TIMEOUT_MS]")
            sys.exit(2)
        import hal_unix

        hal = hal_unix.Hal(sys.argv[1])
        timeout = int(sys.argv[2]) if len(sys.argv) > 2 else fw.HOST_TIMEOUT_MS
    firmware = fw.Firmware(hal, hal.n, timeout)
    asyncio.run(firmware.run())
    d = firmware.link.drops
    counts = " ".join("%s=%d" % (k, d[k]) for k in sorted(d) if d[k])
    print("ledfw: line closed; drops: %s; lost=%d" % (counts or "none", firmware.lost_count))


main()
