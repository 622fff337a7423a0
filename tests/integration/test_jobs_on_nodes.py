"""A job end to end on real processes: `scalerunner up` (coordinator, its mosquitto, the job
manager) and a `scalerunner-agent` whose executor runs it in the process runtime.

Checks the node side against the coordinator's real job part (not a test peer): the run command
is obeyed, the log is stored gap-free in order, the exit code and the artifacts come back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_coordinator import N1, Cluster, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start_coordinator()
        c.ready(N1, timeout=20)
        yield c
    finally:
        c.close()


def test_a_job_runs_on_the_node_and_its_log_exit_code_and_artifacts_come_back(cluster: Cluster) -> None:
    script = "for i in 1 2 3; do echo line$i; done; echo oops >&2; mkdir out; echo data > out/r.txt; exit 4"
    spec = {"name": "e2e", "script": script, "artifacts": ["out/*"], "retries": 0, "timeout": 60}
    r = cluster.api("POST", "/api/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    view = wait_until(
        lambda: (
            (v := cluster.job(job_id))["state"] in ("succeeded", "failed", "timed_out", "cancelled") and v
        ),
        30,
        "the job ends",
    )
    assert (view["state"], view["exit_code"], view["node"]) == ("failed", 4, N1), view
    log = cluster.api("GET", f"/api/v1/jobs/{job_id}/log").json()
    chunks = log["chunks"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    out = "".join(c["data"] for c in chunks if c["stream"] == "stdout")
    err = "".join(c["data"] for c in chunks if c["stream"] == "stderr")
    assert (out, err) == ("line1\nline2\nline3\n", "oops\n")
    arts = cluster.api("GET", f"/api/v1/jobs/{job_id}/artifacts").json()
    assert [a["name"] for a in arts] == ["out/r.txt"], arts
    got = cluster.api("GET", f"/api/v1/jobs/{job_id}/artifacts/out/r.txt")
    assert (got.status_code, got.content) == (200, b"data\n")
