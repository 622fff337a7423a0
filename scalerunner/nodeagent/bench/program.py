"""Programming a board with openFPGALoader: the command line, and its stderr read as a cause.

openFPGALoader exits 1 for every failure, so the cause is read from what it prints. The
bitstream is first staged: copied under a name made of its digest and its suffix into the
stage directory, so a job's workspace can go away while the board is programmed and the
same file is never programmed twice under two names. The board is pinned by its FTDI serial
number (``--ftdi-serial``); a board on a cable that is not an FTDI chip is pinned by the
bus and device number of its USB port (``--busdev-num``, read from sysfs).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import BenchFault
from .hardware import Board

__all__ = ["FTDI_CABLES", "Cause", "build_command", "parse_failure", "program", "stage"]

# openFPGALoader cables built on FTDI chips: the ones --ftdi-serial selects among
FTDI_CABLES = frozenset(
    {
        "digilent",
        "digilent_hs2",
        "digilent_hs3",
        "digilent_b",
        "ft2232",
        "ft2232_b",
        "ft232",
        "ft232RL",
        "ft231X",
        "ft4232",
        "ft4232hp",
        "ftdi",
        "tigard",
        "arm-usb-ocd-h",
        "jtag-smt2-nc",
    }
)
SYSFS_USB = Path("/sys/bus/usb/devices")


@dataclass(frozen=True)
class Cause:
    cause: str  # a short word the CLI prints and tests assert
    detail: str


# (cause, pattern, what it means) — the first match wins, so the specific ones come first.
_CAUSES: list[tuple[str, re.Pattern[str], str]] = [
    (
        "permission",
        re.compile(
            r"LIBUSB_ERROR_ACCESS|Permission denied|-4 \(usb_open\(\) failed\)|"
            r"-8 \(.*?(permission|access)",
            re.I,
        ),
        "no permission to open the USB device (udev rule or plugdev group)",
    ),
    (
        "unknown_board",
        re.compile(r"cannot find board|Error: cable .* not found|error : .* not found"),
        "openFPGALoader does not know this board or cable name",
    ),
    (
        "no_cable",
        re.compile(
            r"unable to open ftdi device|Failed to claim cable|JTAG init failed|"
            r"No such device|cannot find|no device matching",
            re.I,
        ),
        "no cable found: the board is unplugged, or its USB serial number is wrong",
    ),
    (
        "no_fpga",
        re.compile(r"Error: no device found"),
        "the cable answers but the JTAG chain is empty: the board is unpowered",
    ),
    (
        "wrong_device",
        re.compile(
            r"Error: device [0-9a-f]+ not supported|more than one FPGA found|"
            r"Failed to claim FPGA device|wrong (model|device|idcode)|idcode mismatch",
            re.I,
        ),
        "the FPGA found is not the one the bitstream is for",
    ),
    (
        "bad_bitstream",
        re.compile(
            r"Error: Failed to program FPGA|Fail to open|Failed to open|can't open|"
            r"Parse file.*FAIL|Unknown file extension|not a valid|file type",
            re.I,
        ),
        "the bitstream could not be read or is not one the FPGA takes",
    ),
]


def parse_failure(stderr: str) -> Cause:
    """What went wrong, from openFPGALoader's output (it prints errors on stderr and stdout)."""
    for cause, pattern, meaning in _CAUSES:
        if m := pattern.search(stderr):
            line = next((ln.strip() for ln in stderr.splitlines() if m.group(0) in ln), m.group(0))
            return Cause(cause, f"{meaning} (openFPGALoader: {line})")
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "no output")
    return Cause("unknown", f"openFPGALoader failed: {last}")


def _busdev(port: str, sysfs: Path) -> str | None:
    try:
        bus = (sysfs / port / "busnum").read_text().strip()
        dev = (sysfs / port / "devnum").read_text().strip()
    except OSError:
        return None
    return f"{bus}:{dev}"


def build_command(board: Board, staged: Path, sysfs: Path = SYSFS_USB) -> list[str]:
    """openFPGALoader's argv for ``staged``; a BenchFault if the board's USB port is empty."""
    p = board.program
    cmd = ["openFPGALoader", "--board", p.board, "--cable", p.cable]
    if p.cable in FTDI_CABLES:
        cmd += ["--ftdi-serial", p.usb_serial]
    else:
        busdev = _busdev(p.usb_port, sysfs)
        if busdev is None:
            raise BenchFault(
                board.name, "no_cable", f"nothing on USB port {p.usb_port} ({sysfs / p.usb_port})"
            )
        cmd += ["--busdev-num", busdev]
    return [*cmd, str(staged)]


def stage(board: Board, bitstream: Path, stage_dir: Path) -> Path:
    """Copy ``bitstream`` into ``stage_dir`` as ``<sha256 prefix><suffix>`` (atomically)."""
    suffix = bitstream.suffix.lower()
    if suffix not in board.program.suffixes:
        takes = ", ".join(board.program.suffixes)
        raise BenchFault(board.name, "bad_bitstream", f"{bitstream}: board {board.name} takes {takes} files")
    try:
        data = bitstream.read_bytes()
    except OSError as exc:
        raise BenchFault(board.name, "bad_bitstream", f"{bitstream}: {exc.strerror or exc}") from exc
    if not data:
        raise BenchFault(board.name, "bad_bitstream", f"{bitstream}: empty file")
    stage_dir.mkdir(parents=True, exist_ok=True)
    target = stage_dir / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=stage_dir, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    return target


def program(board: Board, bitstream: Path, stage_dir: Path, timeout: float | None = None) -> Path:
    """Stage and program; returns the staged file. Every failure is a BenchFault with a cause."""
    staged = stage(board, bitstream, stage_dir)
    cmd = build_command(board, staged)
    if shutil.which(cmd[0]) is None:
        raise BenchFault(board.name, "no_loader", "openFPGALoader is not installed (Debian: openfpgaloader)")
    limit = timeout or board.program.timeout
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchFault(board.name, "timeout", f"openFPGALoader took over {limit:g} s") from exc
    if done.returncode != 0:
        c = parse_failure(done.stderr + "\n" + done.stdout)
        raise BenchFault(board.name, c.cause, c.detail)
    return staged
