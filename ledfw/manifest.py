# Frozen build of the LED indicator firmware for the RP2040 (MicroPython's manifest format):
#   make -C ports/rp2 BOARD=RPI_PICO FROZEN_MANIFEST=/path/to/scalerunner/ledfw/manifest.py
# Relative paths are from this file's directory. The protocol codec and its layouts come
# from scalerunner/protocol; hal_unix.py and tests_driver.py are unix-port only and stay out.
# (Not built here: there is no rp2 toolchain on these machines.)
include("$(PORT_DIR)/boards/manifest.py")  # the port's own modules, neopixel among them
module("layouts.py", base_path="../scalerunner/protocol")
module("srp.py", base_path="../scalerunner/protocol/mpy")
module("srplink.py", base_path="../scalerunner/protocol/mpy")
module("render.py")
module("fw.py")
module("hal_rp2.py")
module("main.py")
