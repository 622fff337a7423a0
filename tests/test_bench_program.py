"""Programming with openFPGALoader: its stderr read as a cause (recorded texts and the real binary
with no board attached), the command line pinned to the board, and bitstream staging."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from scalerunner.nodeagent.bench.cli import cli
from scalerunner.nodeagent.bench.errors import BenchFault
from scalerunner.nodeagent.bench.hardware import load_bench
from scalerunner.nodeagent.bench.program import build_command, parse_failure, program, stage

BENCH = load_bench()
ARTY = BENCH.boards["arty_a7_35t"]
ICE = BENCH.boards["icebreaker"]

# openFPGALoader 0.10 (Debian bookworm) output. The first three were recorded on this machine
# (no board attached); the others are the messages its sources print for those failures.
RECORDED = [
    (
        "unable to open ftdi device: -3 (device not found)\n"
        "JTAG init failed with: unable to open ftdi device\n",
        "no_cable",
    ),
    ("unable to open ftdi device: -3 (device not found)\nError: Failed to claim cable\n", "no_cable"),
    ("Error: cannot find board 'icebreaker'\n", "unknown_board"),
    (
        "unable to open ftdi device: -4 (usb_open() failed)\n"
        "JTAG init failed with: unable to open ftdi device\n",
        "permission",
    ),
    ("Jtag frequency : requested 6.00MHz   -> real 6.00MHz\nError: no device found\n", "no_fpga"),
    ("Error: device 1234567 not supported\n", "wrong_device"),
    ("Error: more than one FPGA found\nUse --index-chain to force selection\n", "wrong_device"),
    ("Open file DONE\nParse file FAIL\n", "bad_bitstream"),
    ("Error: Failed to program FPGA: Fail to open /tmp/x.bit\n", "bad_bitstream"),
    ("Segmentation fault\n", "unknown"),
]


@pytest.mark.parametrize(("stderr", "cause"), RECORDED)
def test_recorded_failures_are_read_as_their_cause(stderr: str, cause: str) -> None:
    got = parse_failure(stderr)
    assert got.cause == cause
    assert "openFPGALoader" in got.detail


def test_ftdi_boards_are_pinned_by_serial_number(tmp_path: Path) -> None:
    cmd = build_command(ARTY, tmp_path / "a.bit")
    assert cmd == [
        "openFPGALoader",
        "--board",
        "arty_a7_35t",
        "--cable",
        "digilent",
        "--ftdi-serial",
        "210319B5A1C0",
        str(tmp_path / "a.bit"),
    ]


def test_other_cables_are_pinned_by_the_bus_and_device_of_their_usb_port(tmp_path: Path) -> None:
    import msgspec

    dfu = msgspec.structs.replace(ICE, program=msgspec.structs.replace(ICE.program, cable="dfu"))
    with pytest.raises(BenchFault) as err:
        build_command(dfu, tmp_path / "a.bin", sysfs=tmp_path)
    assert err.value.cause == "no_cable" and "USB port 1-1.2" in err.value.detail
    (tmp_path / "1-1.2").mkdir()
    (tmp_path / "1-1.2" / "busnum").write_text("1\n")
    (tmp_path / "1-1.2" / "devnum").write_text("7\n")
    assert build_command(dfu, tmp_path / "a.bin", sysfs=tmp_path)[-3:] == [
        "--busdev-num",
        "1:7",
        str(tmp_path / "a.bin"),
    ]


def test_staging_is_by_content_and_refuses_files_the_board_cannot_take(tmp_path: Path) -> None:
    bit = tmp_path / "design.bit"
    bit.write_bytes(b"\x00\x09bitstream")
    staged = stage(ARTY, bit, tmp_path / "stage")
    assert staged.suffix == ".bit" and staged.read_bytes() == bit.read_bytes()
    assert stage(ARTY, bit, tmp_path / "stage") == staged  # same content, same name
    with pytest.raises(
        BenchFault, match=r"icebreaker: bad_bitstream: .*design\.bit: board icebreaker takes \.bin"
    ):
        stage(ICE, bit, tmp_path / "stage")
    empty = tmp_path / "empty.bit"
    empty.write_bytes(b"")
    with pytest.raises(BenchFault, match="empty file"):
        stage(ARTY, empty, tmp_path / "stage")
    with pytest.raises(BenchFault, match=r"missing\.bit: No such file"):
        stage(ARTY, tmp_path / "missing.bit", tmp_path / "stage")


needs_loader = pytest.mark.skipif(
    shutil.which("openFPGALoader") is None, reason="openfpgaloader not installed"
)


@needs_loader
def test_real_openfpgaloader_with_no_board_attached_is_a_no_cable_fault(tmp_path: Path) -> None:
    bit = tmp_path / "design.bit"
    bit.write_bytes(b"\x00\x09bitstream")
    with pytest.raises(BenchFault) as err:
        program(ARTY, bit, tmp_path / "stage", timeout=30)
    assert err.value.board == "arty_a7_35t" and err.value.cause == "no_cable"
    assert "unable to open ftdi device" in err.value.detail


@needs_loader
def test_program_command_exits_2_and_prints_the_cause(tmp_path: Path) -> None:
    bit = tmp_path / "design.bin"
    bit.write_bytes(b"\xff\x00bitstream")
    result = CliRunner().invoke(
        cli, ["program", "--board", "icebreaker", "--stage-dir", str(tmp_path), str(bit)]
    )
    assert result.exit_code == 2
    assert "board icebreaker: no_cable: no cable found" in result.stderr
    result = CliRunner().invoke(cli, ["program", "--board", "nosuch", str(bit)])
    assert result.exit_code == 2 and "board nosuch: board_missing" in result.stderr
