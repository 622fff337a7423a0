"""Telemetry readers: pure parsers over /proc and /sys text, and the reader over a fixture tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.nodeagent.telemetry import (
    CpuTimes,
    MemInfo,
    ProcReader,
    Sampler,
    cpu_percent,
    disk_free_mb,
    normalise_arch,
    parse_cpu_times,
    parse_loadavg,
    parse_meminfo,
    parse_temperature,
)
from scalerunner.protocol.mqtt import Telemetry, decode, encode

LOADAVG = "0.52 0.58 0.59 2/467 12345\n"

# user nice system idle iowait irq softirq steal guest guest_nice
STAT_1 = """cpu  1000 10 500 8000 200 0 40 0 300 0
cpu0 500 5 250 4000 100 0 20 0 150 0
cpu1 500 5 250 4000 100 0 20 0 150 0
intr 123456 0 0
ctxt 98765
btime 1700000000
"""
STAT_2 = """cpu  1300 10 600 8500 300 0 40 0 400 0
cpu0 650 5 300 4250 150 0 20 0 200 0
"""

MEMINFO = """MemTotal:        3884328 kB
MemFree:          214036 kB
MemAvailable:    2913240 kB
Buffers:          120000 kB
Cached:          2400000 kB
SwapTotal:             0 kB
HugePages_Total:       0
"""
MEMINFO_OLD_KERNEL = """MemTotal:        1024000 kB
MemFree:          102400 kB
Buffers:           51200 kB
Cached:           204800 kB
"""


def test_loadavg_gives_the_one_minute_load() -> None:
    assert parse_loadavg(LOADAVG) == 0.52


@pytest.mark.parametrize("bad", ["", "load\n", "\n"])
def test_unreadable_loadavg_raises_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_loadavg(bad)


def test_cpu_times_count_iowait_as_idle_and_guest_time_once() -> None:
    t = parse_cpu_times(STAT_1)
    assert t == CpuTimes(busy=1000 + 10 + 500 + 40, total=1000 + 10 + 500 + 8000 + 200 + 40)


def test_cpu_percent_is_the_busy_share_between_two_samples() -> None:
    a, b = parse_cpu_times(STAT_1), parse_cpu_times(STAT_2)
    # busy +300 user +100 system = 400; idle +500 iowait +100 = 600; 400 / 1000
    assert cpu_percent(a, b) == 40.0


def test_cpu_percent_without_a_previous_sample_is_since_boot() -> None:
    t = parse_cpu_times(STAT_1)
    assert cpu_percent(None, t) == round(100 * t.busy / t.total, 1)


def test_cpu_counters_going_backwards_give_zero_not_a_negative_percentage() -> None:
    assert cpu_percent(CpuTimes(500, 1000), CpuTimes(100, 900)) == 0.0


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
def test_cpu_percent_stays_within_0_and_100(b1: int, i1: int, b2: int, i2: int) -> None:
    pct = cpu_percent(CpuTimes(b1, b1 + i1), CpuTimes(b2, b2 + i2))
    assert 0.0 <= pct <= 100.0


def test_a_proc_stat_without_an_aggregate_cpu_line_raises() -> None:
    with pytest.raises(ValueError):
        parse_cpu_times("cpu0 1 2 3 4\nintr 5\n")


def test_meminfo_uses_mem_available() -> None:
    m = parse_meminfo(MEMINFO)
    assert m == MemInfo(total_mb=3884328 // 1024, available_mb=2913240 // 1024)
    assert m.used_mb == 3793 - 2844


def test_meminfo_of_an_old_kernel_counts_free_buffers_and_cache_as_available() -> None:
    m = parse_meminfo(MEMINFO_OLD_KERNEL)
    assert (m.total_mb, m.available_mb) == (1000, (102400 + 51200 + 204800) // 1024)


def test_meminfo_without_mem_total_raises() -> None:
    with pytest.raises(ValueError):
        parse_meminfo("MemFree: 1 kB\n")


def test_temperature_is_the_hottest_zone_in_celsius() -> None:
    assert parse_temperature(["45123\n", "61500\n", "38000\n"]) == 61.5


def test_temperature_skips_garbage_and_absurd_zones() -> None:
    assert parse_temperature(["", "n/a\n", "-273000\n", "52000\n"]) == 52.0


def test_no_readable_thermal_zone_means_no_temperature() -> None:
    assert parse_temperature([]) is None
    assert parse_temperature(["garbage"]) is None


@pytest.mark.parametrize(
    ("machine", "arch"),
    [
        ("x86_64", "amd64"),
        ("AMD64", "amd64"),
        ("aarch64", "arm64"),
        ("arm64", "arm64"),
        ("riscv64", "riscv64"),
        ("armv7l", "armv7l"),
        ("", "unknown"),
    ],
)
def test_arch_is_normalised_to_the_image_registry_names(machine: str, arch: str) -> None:
    assert normalise_arch(machine) == arch


def test_disk_free_is_what_an_unprivileged_writer_may_use() -> None:
    assert disk_free_mb(f_bavail=2048, f_frsize=4096) == 8


def _fixture_root(tmp_path: Path, *, thermal: list[str] | None) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "loadavg").write_text(LOADAVG)
    (tmp_path / "proc" / "stat").write_text(STAT_1)
    (tmp_path / "proc" / "meminfo").write_text(MEMINFO)
    for i, text in enumerate(thermal or []):
        zone = tmp_path / "sys" / "class" / "thermal" / f"thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "temp").write_text(text)
    return tmp_path


def test_sampler_reads_a_proc_tree_into_a_schema_valid_telemetry_payload(tmp_path: Path) -> None:
    root = _fixture_root(tmp_path, thermal=["47000\n", "49500\n"])
    sampler = Sampler("rack1-07", ProcReader(root, state_dir=tmp_path))
    sampler.prime()
    (root / "proc" / "stat").write_text(STAT_2)
    tele = sampler.sample(ts=1700000000.0)
    assert tele is not None
    assert decode(encode(tele), Telemetry) == tele
    assert (tele.node, tele.load1, tele.cpu_pct, tele.temp_c) == ("rack1-07", 0.52, 40.0, 49.5)
    assert (tele.mem_total_mb, tele.mem_used_mb, tele.jobs) == (3793, 3793 - 2844, [])
    assert tele.disk_free_mb is not None and tele.disk_free_mb >= 0


def test_a_node_without_thermal_zones_or_state_dir_reports_none(tmp_path: Path) -> None:
    root = _fixture_root(tmp_path, thermal=None)
    tele = Sampler("n1", ProcReader(root, state_dir=tmp_path / "absent")).sample(ts=1.0)
    assert tele is not None
    assert (tele.temp_c, tele.disk_free_mb) == (None, None)


def test_an_unreadable_proc_gives_no_sample_and_counts_the_error(tmp_path: Path) -> None:
    sampler = Sampler("n1", ProcReader(tmp_path))
    assert sampler.sample(ts=1.0) is None
    assert sampler.errors == 1


def test_the_real_proc_of_this_machine_reads() -> None:
    tele = Sampler("n1", ProcReader(Path("/"), state_dir=Path("/"))).sample(ts=1.0)
    assert tele is not None and tele.mem_total_mb > 0
