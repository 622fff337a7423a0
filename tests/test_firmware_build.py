"""Firmware builds for the RP2040 stay within their size budget; deploy goes through mpremote."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from scalerunner.firmware import (
    FIRMWARES,
    SIZE_BUDGET,
    FirmwareError,
    build,
    deploy_command,
    ledboard_source,
    manifest_modules,
)

SCALERUNNER = Path(sys.executable).with_name("scalerunner")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_firmware_compiles_for_the_rp2040_within_its_size_budget(firmware: str, tmp_path: Path) -> None:
    built = build(firmware, tmp_path)
    names = [f.name for f in built.files]
    assert "main.py" in names  # the board runs /main.py at boot: kept as source
    assert {"layouts.mpy", "srp.mpy", "srplink.mpy"} <= set(names)  # the protocol runs beside it
    assert all(n.endswith(".mpy") for n in names if n != "main.py")
    assert not any("hal_unix" in n for n in names)  # the unix HAL never goes onto a board
    # .mpy files start with 'M' and the format version (6 since MicroPython 1.22; bytecode only,
    # so no architecture is recorded)
    header = (tmp_path / "srp.mpy").read_bytes()[:2]
    assert header == b"M\x06", header.hex()
    assert built.size <= SIZE_BUDGET, f"{firmware} is {built.size} bytes, budget {SIZE_BUDGET}"


def test_manifest_lists_only_files_that_exist() -> None:
    for firmware in FIRMWARES:
        assert all(p.is_file() for p in manifest_modules(firmware))


def test_deploy_is_one_chained_mpremote_call_ending_in_a_reset(tmp_path: Path) -> None:
    built = build("ledfw", tmp_path)
    cmd = deploy_command(built, "/dev/ttyACM7")
    assert cmd[:3] == ["mpremote", "connect", "/dev/ttyACM7"] and cmd[-1] == "reset"
    copies = [cmd[i + 2 : i + 4] for i, a in enumerate(cmd) if a == "fs"]
    assert [Path(src).name for src, _ in copies] == [f.name for f in built.files]
    assert all(dst == f":{Path(src).name}" for src, dst in copies)


def test_deploy_to_a_port_with_no_board_runs_mpremote_and_exits_3_naming_the_port() -> None:
    proc = subprocess.run(
        [str(SCALERUNNER), "fw", "deploy", "bmc", "--port", "/dev/ttyNOSUCHBOARD"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert "/dev/ttyNOSUCHBOARD" in proc.stderr and "mpremote failed" in proc.stderr


def test_the_firmwares_use_only_the_link_s_public_interface() -> None:
    # srplink's underscored members may change with the link; a firmware reading them breaks silently
    private = re.compile(r"\blink\._\w+|\._dec\b")
    for src in sorted([*(REPO / "ledfw").glob("*.py"), *(REPO / "bmc").glob("*.py")]):
        for n, line in enumerate(src.read_text().splitlines(), 1):
            assert not private.search(line), f"{src.relative_to(REPO)}:{n}: {line.strip()}"


def test_leds_choose_the_led_board_in_a_ledboard_module_copied_with_the_firmware(tmp_path: Path) -> None:
    assert ledboard_source("strip") == "N = 8\n"
    assert ledboard_source("strip:32") == "N = 32\n"
    assert "LIGHT_GUIDE as RGB_PINS" in ledboard_source("light-guide")
    for bad in ("strip:0", "strip:33", "strip:x", "rgb", "light-guide:5"):
        with pytest.raises(FirmwareError, match="strip:N"):
            ledboard_source(bad)
    built = build("ledfw", tmp_path, "strip:12")
    assert (tmp_path / "ledboard.py").read_text() == "N = 12\n" and tmp_path / "ledboard.py" in built.files
    cmd = deploy_command(built, "/dev/ttyACM0")
    assert f"{tmp_path / 'ledboard.py'}" in cmd and ":ledboard.py" in cmd
    assert not (tmp_path / "plain").exists()
    assert all(f.name != "ledboard.py" for f in build("ledfw", tmp_path / "plain").files)


def test_leds_for_the_bmc_or_a_bad_leds_value_is_a_usage_error() -> None:
    for args in (["bmc", "--leds", "strip"], ["ledfw", "--leds", "strip:99"]):
        r = subprocess.run(
            [str(SCALERUNNER), "fw", "deploy", *args, "--port", "/dev/ttyACM9", "--dry-run"],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2 and "--leds" in r.stderr, r.stderr
