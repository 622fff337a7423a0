"""The simulated rack's pure parts: rack spots, the inventory it writes, /proc parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.inventory import loads_inventory
from scalerunner.nodeagent.config import load_config
from scalerunner.sim import procs
from scalerunner.sim.rack_config import ROW, agent_text, inventory_text, node_specs, rack_spot


@given(st.integers(1, 2000))
def test_rack_spots_fill_rows_of_14_in_order(i: int) -> None:
    row, pos = rack_spot(i)
    assert 1 <= pos <= ROW
    assert (row - 1) * ROW + pos == i


def test_rack_spot_rejects_zero() -> None:
    with pytest.raises(ValueError, match="node index 0"):
        rack_spot(0)


@given(st.integers(1, 40))
def test_the_inventory_loads_with_every_node_on_its_port_and_an_uplink(n: int) -> None:
    specs = node_specs(n, [f"/dev/pts/{i}" for i in range(n)], [f"/dev/pts/{100 + i}" for i in range(n)])
    inv = loads_inventory(inventory_text(specs, "amd64", 16161), "/tmp/sim/scalerunner.toml")
    assert len(inv.nodes) == n and len({node.mac for node in inv.nodes}) == n
    (sw,) = inv.switches
    assert sw.profile == "scalerunner-sim" and sw.port == 16161 and sw.uplink_ports == (n + 1,)
    for i, node in enumerate(inv.nodes, 1):
        assert node.port == i and node.switch == sw.name
        assert node.rack is not None and (node.rack.row, node.rack.position) == rack_spot(i)
        assert node.bmc_port == f"/dev/pts/{i - 1}" and node.led_port == f"/dev/pts/{99 + i}"


def test_node_specs_need_a_port_per_node() -> None:
    with pytest.raises(ValueError, match="2 nodes need 2"):
        node_specs(2, ["/dev/pts/1"], ["/dev/pts/2", "/dev/pts/3"])


def test_the_agent_config_loads_with_the_process_runtime_and_the_led(tmp_path: Path) -> None:
    (spec,) = node_specs(1, ["/dev/pts/7"], ['/dev/pts/"8'])  # a quote survives the TOML string
    path = tmp_path / "agent.toml"
    path.write_text(agent_text(spec, 18830, "s3cret", tmp_path))
    cfg = load_config(path)
    assert (cfg.node, cfg.broker_port, cfg.password) == ("sim-01", 18830, "s3cret")
    assert (
        cfg.led_serial == '/dev/pts/"8'
        and cfg.job_runtime == "process"
        and cfg.bench_backend == "sim"
        and cfg.state_dir == tmp_path
    )


comm = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n"), max_size=15)


@given(comm, st.integers(1, 2**22), st.integers(0, 2**22), st.integers(0, 10**9), st.integers(0, 10**9))
def test_parse_stat_counts_fields_after_the_last_parenthesis(
    name: str, pid: int, ppid: int, utime: int, stime: int
) -> None:
    rest = f"S {ppid} {pid} {pid} 34816 {pid} 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 1 0 5 0 0"
    s = procs.parse_stat(f"{pid} ({name}) {rest}")
    assert (s.pid, s.state, s.ppid, s.pgrp, s.session, s.cpu_ticks) == (
        pid,
        "S",
        ppid,
        pid,
        pid,
        utime + stime,
    )


def test_parse_stat_names_a_bad_line() -> None:
    with pytest.raises(ValueError, match="not a /proc stat line"):
        procs.parse_stat("garbage")


def test_descendants_follow_parents_and_ignore_others() -> None:
    def p(pid: int, ppid: int, ticks: int = 1) -> procs.ProcStat:
        return procs.ProcStat(pid, "S", ppid, pid, pid, ticks)

    stats = {s.pid: s for s in [p(1, 0), p(10, 1, 5), p(11, 10, 7), p(12, 11, 2), p(20, 1, 100)]}
    assert procs.descendants(stats, 10) == {10, 11, 12}
    assert procs.tree_ticks(stats, 10) == 14
    assert procs.descendants(stats, 99) == set()  # a pid that is gone


def test_this_process_is_found_in_proc() -> None:
    import os

    me = procs.scan()[os.getpid()]
    assert me.ppid == os.getppid() and me.session == os.getsid(0) and me.state in "RS"


def test_mentions_matches_whole_paths_only(tmp_path: Path) -> None:
    import subprocess

    rack = tmp_path / "rack"
    (tmp_path / "rack2").mkdir()
    (rack / "nodes" / "sim-01").mkdir(parents=True)

    def start(*args: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["sh", "-c", "sleep 30", "sh", *args], cwd=cwd)

    procs_ = [
        start(f"--dir={rack}"),
        start(str(rack / "state" / "x.conf")),
        start(str(tmp_path / "rack2")),
        start(cwd=tmp_path / "rack2"),
        start(cwd=rack / "nodes" / "sim-01"),  # a job of an agent whose supervisor died
        start(cwd=rack),  # a user's shell in the rack's directory is not the rack's
    ]
    try:
        assert [procs.mentions(p.pid, rack) for p in procs_] == [True, True, False, False, True, False]
    finally:
        for p in procs_:
            p.kill()
            p.wait()


def test_a_new_rack_clears_what_the_last_one_left_and_refuses_a_foreign_inventory(tmp_path: Path) -> None:
    from scalerunner.sim.rack import RackError, SimRack

    rack = SimRack(tmp_path, 2)
    specs = node_specs(1, ["/dev/pts/1"], ["/dev/pts/2"])
    (tmp_path / "scalerunner.toml").write_text(inventory_text(specs, "amd64", 161))
    for path in ("state/store.db", "nodes/sim-01/agent.log", "status.json", "api.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    rack._fresh_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]

    (tmp_path / "scalerunner.toml").write_text('[cluster]\nname = "lab"\n')
    with pytest.raises(
        RackError, match=r"scalerunner\.toml: an inventory `scalerunner sim up` did not write"
    ):
        rack._fresh_dir()
    assert (tmp_path / "scalerunner.toml").exists()
