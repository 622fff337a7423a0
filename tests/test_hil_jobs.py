"""A HIL job's node side (nodeagent/jobs/hil.py): the bitstream confined to the work directory,
the checks file the bench reads, the bench command, how its exit code ends the job, and the
bench itself run on the shipped counter design with the sim back end (Icarus Verilog)."""

from __future__ import annotations

import asyncio
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.jobs.spec import JobSpecError, parse_spec
from scalerunner.nodeagent.bench.checks import load_checks
from scalerunner.nodeagent.bench.errors import BenchConfigError
from scalerunner.nodeagent.config import ConfigError, parse_config
from scalerunner.nodeagent.jobs.hil import (
    JUNIT_FILE,
    BenchRunFault,
    HilError,
    bench_argv,
    bench_result,
    bitstream_path,
    checks_document,
    run_bench,
)
from scalerunner.nodeagent.runtime.base import JobEnd, JobResult
from scalerunner.protocol.mqtt import HilRun

COUNTER = Path(__file__).resolve().parents[1] / "hardware" / "designs" / "counter"
TOML = tomllib.loads((COUNTER / "checks.toml").read_text())
HIL = HilRun(board="arty_a7_35t", bitstream="counter.v", checks=TOML["checks"], sim=TOML["sim"])


def test_a_bitstream_inside_the_work_directory_is_found_there(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    assert bitstream_path(tmp_path, "out/top.bit") == tmp_path.resolve() / "out" / "top.bit"
    assert bitstream_path(tmp_path, "./out/../top.bit") == tmp_path.resolve() / "top.bit"


@pytest.mark.parametrize("bad", ["../top.bit", "out/../../top.bit", "/etc/passwd", "", "a\x00b"])
def test_a_bitstream_outside_the_work_directory_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(HilError, match=r"hil\.bitstream"):
        bitstream_path(tmp_path / "work", bad)


def test_a_symlink_out_of_the_work_directory_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "top.bit").symlink_to(tmp_path / "secret")
    with pytest.raises(HilError, match="leads out of the job's work directory"):
        bitstream_path(work, "top.bit")


@given(st.lists(st.sampled_from(["..", ".", "a", "b", "/"]), min_size=1, max_size=8))
def test_whatever_the_path_the_result_is_inside_the_work_directory_or_refused(parts: list[str]) -> None:
    work = Path("/srv/jobs/j-1/work")
    try:
        got = bitstream_path(work, "/".join(parts))
    except HilError:
        return
    assert got.is_relative_to(work)


def test_the_checks_document_is_the_checks_file_the_bench_reads(tmp_path: Path) -> None:
    (tmp_path / "checks.json").write_bytes(checks_document(HIL))
    got, want = load_checks(tmp_path / "checks.json"), load_checks(COUNTER / "checks.toml")
    assert (got.checks, got.sim) == (want.checks, want.sim)


def test_bad_checks_are_the_bench_s_error_naming_the_file_and_key(tmp_path: Path) -> None:
    bad = HilRun(board="b", bitstream="x.bit", checks=[{"name": "c", "kind": "frequency", "hz": 1}])
    (tmp_path / "checks.json").write_bytes(checks_document(bad))
    with pytest.raises(BenchConfigError, match=r"checks\.json: .*checks\[0\]"):
        load_checks(tmp_path / "checks.json")


def test_the_bench_command_names_board_files_and_back_end(tmp_path: Path) -> None:
    argv = bench_argv(
        HIL, tmp_path / "counter.v", tmp_path / "c.json", tmp_path / "j.xml", backend="sim", boards_dir=None
    )
    tail = argv[argv.index("check") :]
    assert tail == [
        "check",
        *("--board", "arty_a7_35t", "--bitstream", str(tmp_path / "counter.v")),
        *("--checks", str(tmp_path / "c.json"), "--junit", str(tmp_path / "j.xml"), "--backend", "sim"),
    ]
    with_boards = bench_argv(HIL, Path("b"), Path("c"), Path("j"), backend="gpiod", boards_dir=Path("/etc/b"))
    assert with_boards[-2:] == ["--boards-dir", "/etc/b"]
    with pytest.raises(ValueError, match="unknown bench back end 'usb'"):
        bench_argv(HIL, Path("b"), Path("c"), Path("j"), backend="usb", boards_dir=None)


def test_the_bench_s_exit_code_ends_the_job() -> None:
    assert bench_result("j", "arty", 0) == JobResult(JobEnd.EXITED, 0)
    failed = bench_result("j", "arty", 1)
    assert (failed.end, failed.exit_code) == (JobEnd.EXITED, 1) and JUNIT_FILE in failed.detail
    with pytest.raises(BenchRunFault, match=r"job j: bench fault on arty \(scalerunner-bench exit 2"):
        bench_result("j", "arty", 2)


def _bench(work: Path, hil: HilRun) -> tuple[JobResult, str]:
    out: list[bytes] = []
    result = asyncio.run(
        run_bench("j", hil, work, lambda _s, d: out.append(d), backend="sim", boards_dir=None)
    )
    return result, b"".join(out).decode()


def test_the_bench_checks_the_good_and_the_broken_counter(tmp_path: Path) -> None:
    (tmp_path / "counter.v").write_bytes((COUNTER / "counter.v").read_bytes())
    result, log = _bench(tmp_path, HIL)
    assert result == JobResult(JobEnd.EXITED, 0), log
    assert ET.parse(tmp_path / JUNIT_FILE).getroot().get("failures") == "0"
    (tmp_path / "counter_broken.v").write_bytes((COUNTER / "counter_broken.v").read_bytes())
    result, log = _bench(tmp_path, msgspec.structs.replace(HIL, bitstream="counter_broken.v"))
    assert (result.end, result.exit_code) == (JobEnd.EXITED, 1), log
    assert "FAIL arty_a7_35t: LEDs count up in binary: expected" in log


def test_a_missing_board_is_a_bench_fault_and_still_writes_the_report(tmp_path: Path) -> None:
    (tmp_path / "counter.v").write_bytes((COUNTER / "counter.v").read_bytes())
    with pytest.raises(BenchRunFault, match="bench fault on tangnano20k"):
        _bench(tmp_path, msgspec.structs.replace(HIL, board="tangnano20k"))
    assert ET.parse(tmp_path / JUNIT_FILE).getroot().get("errors") == "1"


def test_a_bitstream_the_command_did_not_make_fails_the_job_not_the_node(tmp_path: Path) -> None:
    with pytest.raises(HilError, match=r"hil\.bitstream 'counter\.v' is not a file"):
        _bench(tmp_path, HIL)


def test_the_spec_refuses_a_bitstream_outside_the_work_directory() -> None:
    with pytest.raises(
        JobSpecError, match=r"job\.json: key 'hil\.bitstream': '\.\./x\.bit' must not contain"
    ):
        parse_spec('{"command": ["true"], "hil": {"board": "b", "bitstream": "../x.bit"}}', "job.json")


def test_the_agent_config_names_the_bench_back_end() -> None:
    base = 'cluster = "lab"\nnode = "n1"\n[broker]\nhost = "h"\npassword = "x"\n'
    assert parse_config(base, source="a.toml").bench_backend == "gpiod"
    c = parse_config(
        base + '[jobs]\nbench = "sim"\nbench_boards = "boards"\n', source="a.toml", base_dir=Path("/e")
    )
    assert (c.bench_backend, c.bench_boards) == ("sim", Path("/e/boards"))
    with pytest.raises(ConfigError) as info:
        parse_config(base + '[jobs]\nbench = "usb"\n', source="a.toml")
    assert info.value.key == "jobs.bench"
