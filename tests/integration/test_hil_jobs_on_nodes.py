"""A HIL job end to end: `scalerunner up` and a `scalerunner-agent` whose node has the board
(label ``hil:arty_a7_35t``) and the ``sim`` bench back end. The job's command fetches the
shipped counter design into its work directory; the agent then runs the bench's checks on it in
Icarus Verilog. The good design succeeds with a passing JUnit report as an artifact; the broken
one fails (exit 1) and its report says what was expected and what was seen.
"""

from __future__ import annotations

import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scalerunner.nodeagent.jobs.hil import JUNIT_FILE
from tests.integration.test_coordinator import N1, Cluster, wait_until

pytestmark = pytest.mark.slow

DESIGNS = Path(__file__).resolve().parents[2] / "hardware" / "designs"
BOARD = "arty_a7_35t"
GONE = "tangnano20k"  # labelled on the node, but no board file: the bench cannot check on it


class HilCluster(Cluster):
    """N1 has the board on its bench and checks with the simulator."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        text = self.inventory.read_text()
        old = 'labels = ["kvm", "pool=ci"]'
        assert old in text
        self.inventory.write_text(
            text.replace(old, f'labels = ["kvm", "pool=ci", "hil:{BOARD}", "hil:{GONE}"]', 1)
        )
        self.agent_extra = '[jobs]\nbench = "sim"\n'


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = HilCluster(tmp_path)
    try:
        c.start_coordinator()
        c.ready(N1, timeout=20)
        yield c
    finally:
        c.close()


def _spec(design: str, board: str = BOARD, command: list[str] | None = None) -> dict[str, Any]:
    checks = tomllib.loads((DESIGNS / "counter" / "checks.toml").read_text())
    src = DESIGNS / "counter" / f"{design}.v"
    return {
        "name": design.replace("_", "-"),
        "command": command or ["cp", str(src), "."],  # the job fetches (or builds) the bitstream
        "hil": {"board": board, "bitstream": f"{design}.v", "checks": checks["checks"], "sim": checks["sim"]},
        "retries": 0,
        "timeout": 60,
    }


def _ended(cluster: Cluster, spec: dict[str, Any]) -> tuple[dict[str, Any], str, list[str]]:
    """Submit ``spec``, wait for its end: the job's view, its log and its artifacts' names."""
    r = cluster.api("POST", "/api/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    def ended() -> dict[str, Any] | None:
        view: dict[str, Any] = cluster.api("GET", f"/api/v1/jobs/{job_id}").json()
        return view if view["state"] in ("succeeded", "failed", "timed_out", "cancelled") else None

    view = wait_until(ended, 30, f"job {job_id} ends")
    chunks = cluster.api("GET", f"/api/v1/jobs/{job_id}/log").json()["chunks"]
    arts = cluster.api("GET", f"/api/v1/jobs/{job_id}/artifacts").json()
    return view, "".join(c["data"] for c in chunks), [a["name"] for a in arts]


def _run(cluster: Cluster, design: str, board: str = BOARD) -> tuple[dict[str, Any], str, ET.Element]:
    """A HIL job on ``design``: its view, its log and its JUnit report (an artifact, always)."""
    view, log, arts = _ended(cluster, _spec(design, board))
    assert arts == [JUNIT_FILE], (arts, view, log)
    got = cluster.api("GET", f"/api/v1/jobs/{view['id']}/artifacts/{JUNIT_FILE}")
    assert got.status_code == 200, got.text
    return view, log, ET.fromstring(got.content)


def test_a_hil_job_checks_its_bitstream_and_brings_the_junit_report_back(cluster: Cluster) -> None:
    view, log, junit = _run(cluster, "counter")
    assert (view["state"], view["exit_code"], view["node"]) == ("succeeded", 0, N1), (view, log)
    cases = junit.findall("testcase")
    assert [c.get("name") for c in cases] == ["led0 blinks at 5.96 Hz", "LEDs count up in binary"]
    assert all(c.find("failure") is None and c.find("error") is None for c in cases), log
    assert "bench checks on arty_a7_35t" in log  # the bench's results table is in the job's log

    view, log, junit = _run(cluster, "counter_broken")
    assert (view["state"], view["exit_code"]) == ("failed", 1), (view, log)
    failures = [f.get("message", "") for f in junit.iter("failure")]
    assert any("expected led3 led2 led1 led0 to count up in binary" in m and "saw" in m for m in failures)
    assert "FAIL arty_a7_35t: LEDs count up in binary: expected" in log


def test_a_bench_fault_is_the_node_s_fault_and_still_brings_the_report(cluster: Cluster) -> None:
    view, log, junit = _run(cluster, "counter", GONE)
    # a fault counts against retries (0 here), like a runtime fault: never a design's failure
    assert view["state"] == "failed" and view["exit_code"] is None, (view, log)
    attempt = view["attempts"][0]
    assert attempt["state"] == "lost" and "bench fault on tangnano20k" in attempt["reason"], view
    assert f"no board {GONE!r}" in log
    assert len(list(junit.iter("error"))) == 1


def test_no_bench_runs_when_the_command_fails_or_makes_no_bitstream(cluster: Cluster) -> None:
    view, log, arts = _ended(cluster, _spec("counter", command=["sh", "-c", "echo no build; exit 3"]))
    assert (view["state"], view["exit_code"], arts) == ("failed", 3, []), (view, log)
    assert "scalerunner-bench" not in log and "matched nothing" not in view["attempts"][0]["reason"]
    view, log, arts = _ended(cluster, _spec("counter", command=["true"]))
    # the job's fault, not the node's: failed at once, not lost and retried
    assert (view["state"], view["exit_code"], arts) == ("failed", 1, []), (view, log)
    assert view["attempts"][0]["state"] == "failed", view
    assert "hil.bitstream 'counter.v' is not a file in the job's work directory" in log
