"""The example designs through `scalerunner-bench check --backend sim`: the real Icarus Verilog
runs each design; the good ones pass (exit 0), the broken ones fail (exit 1) saying what was
expected and what was seen, and a broken bench is exit 2 - in the exit code and in JUnit XML."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from scalerunner.nodeagent.bench.cli import cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed"),
]

DESIGNS = Path(__file__).resolve().parents[2] / "hardware" / "designs"
COUNTER = ["--board", "arty_a7_35t", "--checks", str(DESIGNS / "counter" / "checks.toml")]
UART = ["--board", "icebreaker", "--checks", str(DESIGNS / "uart_banner" / "checks.toml")]


def _check(args: list[str], design: Path, junit: Path) -> tuple[int, str, str, ET.Element]:
    result = CliRunner().invoke(
        cli, ["check", "--backend", "sim", *args, "--bitstream", str(design), "--junit", str(junit)]
    )
    return result.exit_code, result.stdout, result.stderr, ET.parse(junit).getroot()


def _cases(suite: ET.Element) -> dict[str, ET.Element]:
    return {c.attrib["name"]: c for c in suite.iter("testcase")}


def test_counter_passes_and_its_broken_copy_fails_both_checks(tmp_path: Path) -> None:
    code, out, _, suite = _check(COUNTER, DESIGNS / "counter" / "counter.v", tmp_path / "ok.xml")
    assert code == 0, out
    assert suite.attrib | {"time": ""} == {
        "name": "bench.arty_a7_35t",
        "tests": "2",
        "failures": "0",
        "errors": "0",
        "time": "",
    }
    assert all(c.find("failure") is None for c in _cases(suite).values())
    assert "led0 at 5.96 Hz" in out

    code, _, err, suite = _check(COUNTER, DESIGNS / "counter" / "counter_broken.v", tmp_path / "bad.xml")
    assert code == 1
    assert suite.attrib["failures"] == "2" and suite.attrib["errors"] == "0"
    freq = _cases(suite)["led0 blinks at 5.96 Hz"].find("failure")
    assert freq is not None
    assert freq.attrib["message"] == (
        "expected led0 toggling at 5.96 Hz ± 2%; saw 0.7451 Hz (-87.5%) over 3 periods"
    )
    pattern = _cases(suite)["LEDs count up in binary"].find("failure")
    assert pattern is not None and pattern.attrib["message"].startswith(
        "expected led3 led2 led1 led0 to count up in binary: 0001 after 0000; saw 1000 at"
    )
    assert "FAIL arty_a7_35t: LEDs count up in binary" in err


def test_uart_banner_passes_and_its_broken_copy_fails_the_uart_check(tmp_path: Path) -> None:
    code, out, _, suite = _check(UART, DESIGNS / "uart_banner" / "uart_banner.v", tmp_path / "ok.xml")
    assert code == 0, out
    assert [c.find("failure") for c in _cases(suite).values()] == [None, None]

    code, _, _, suite = _check(UART, DESIGNS / "uart_banner" / "uart_banner_broken.v", tmp_path / "bad.xml")
    assert code == 1
    cases = _cases(suite)
    assert cases["loop_out follows loop_in"].find("failure") is None
    failure = cases["banner at 115200 baud"].find("failure")
    assert failure is not None
    # 'S' (0x53) sent most significant bit first reads back as 0xca
    assert failure.attrib["message"].startswith(
        "expected 'Scalerunner HIL OK\\r\\n' on uart_tx at 115200 baud within 25 ms; saw '\\xca"
    )


def test_bench_faults_exit_2_and_are_junit_errors(tmp_path: Path) -> None:
    design = DESIGNS / "counter" / "counter.v"
    code, _, err, suite = _check(["--board", "nosuch", *COUNTER[2:]], design, tmp_path / "a.xml")
    assert code == 2 and "board nosuch: board_missing" in err
    assert suite.attrib["errors"] == "1" and suite.find("testcase/error") is not None

    before = set(Path(tempfile.gettempdir()).glob("scalerunner-sim-*"))
    broken = tmp_path / "counter.v"
    broken.write_text(design.read_text().replace("endmodule", ""))
    code, _, err, suite = _check(COUNTER, broken, tmp_path / "b.xml")
    assert code == 2 and "sim_build" in err
    assert set(Path(tempfile.gettempdir()).glob("scalerunner-sim-*")) <= before  # nothing left behind
    error = suite.find("testcase/error")
    assert error is not None and error.attrib["type"] == "sim_build"


@pytest.mark.skipif(shutil.which("openFPGALoader") is None, reason="openfpgaloader not installed")
def test_gpiod_backend_without_a_board_is_a_programming_fault(tmp_path: Path) -> None:
    """The real path of a node: openFPGALoader runs first, finds no cable here, exit 2."""
    bit = tmp_path / "counter.bit"
    bit.write_bytes(b"\x00\x09bitstream")
    exe = Path(sys.executable).parent / "scalerunner-bench"
    done = subprocess.run(
        [
            str(exe),
            "check",
            *COUNTER,
            "--bitstream",
            str(bit),
            "--junit",
            str(tmp_path / "j.xml"),
            "--stage-dir",
            str(tmp_path / "stage"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "board arty_a7_35t: no_cable" in done.stderr
    error = ET.parse(tmp_path / "j.xml").getroot().find("testcase/error")
    assert error is not None and error.attrib["type"] == "no_cable"


def test_an_output_stuck_at_x_is_a_failing_design_and_no_sim_table_a_fault(tmp_path: Path) -> None:
    """A register never initialised stays x in simulation: no edges, the check fails (exit 1)."""
    design = tmp_path / "stuck.v"
    design.write_text(
        "module stuck(input wire clk, output reg led0);\n  always @(posedge clk) led0 <= ~led0;\nendmodule\n"
    )
    checks = tmp_path / "checks.toml"
    checks.write_text(
        '[sim]\n\n[[checks]]\nname = "blink"\nkind = "frequency"\nsignal = "led0"\nhz = 1e6\ntimeout = 1e-4\n'
    )
    args = ["--board", "arty_a7_35t", "--checks", str(checks)]
    code, _, _, suite = _check(args, design, tmp_path / "a.xml")
    assert code == 1
    failure = suite.find("testcase/failure")
    assert failure is not None
    assert failure.attrib["message"].endswith("saw 0 change(s) in 100 µs, under 3 periods")

    checks.write_text(checks.read_text().replace("[sim]\n", ""))
    code, _, err, _ = _check(args, design, tmp_path / "b.xml")
    assert code == 2 and "board arty_a7_35t: no_sim" in err
