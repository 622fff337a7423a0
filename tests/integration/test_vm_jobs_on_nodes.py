"""A job end to end in a VM: `scalerunner up` (coordinator, its mosquitto, the job manager), an image in
a real registry (Debian's docker-registry on loopback), and a `scalerunner-agent` with
`[jobs] runtime = "vm"` that pulls the image and runs the job in a fresh QEMU guest (TCG here).

Issue 5's "submit -> runs in a VM (TCG) -> logs and exit code back", on the coordinator's real job part:
the log is stored gap-free and in order, the exit code is the job's, and what the job left in /work
comes back as an artifact (the guest's /work travels back over virtio-serial).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.oci_fixtures import Registry, registry  # noqa: F401 (a fixture)
from tests.integration.test_coordinator import N1, Cluster, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.vm, pytest.mark.timeout(180)]

MARKER = "pulled-for-the-vm-runtime"


@pytest.fixture
def vm_cluster(tmp_path: Path, registry: Registry) -> Iterator[tuple[Cluster, str]]:  # noqa: F811
    ref = registry.push_busybox(tmp_path / "build", "test/vm:1", marker=MARKER)
    c = Cluster(tmp_path)
    c.agent_extra = f'[jobs]\nruntime = "vm"\ninsecure_registries = ["{registry.host}"]\n'
    try:
        c.start_coordinator()
        c.ready(N1, timeout=20)
        yield c, ref
    finally:
        c.close()


def test_a_job_submitted_to_a_vm_node_runs_in_the_guest_and_its_log_exit_code_and_work_come_back(
    vm_cluster: tuple[Cluster, str],
) -> None:
    cluster, ref = vm_cluster
    # pid 1 of its own namespace, in the image's root filesystem, inside a VM (the guest's kernel)
    script = (
        'cat /etc/marker; echo "pid $$ in $(pwd)"; uname -r; echo oops >&2;'
        " mkdir out; echo data > out/r.txt; exit 5"
    )
    spec = {
        "name": "vm-e2e",
        "image": ref,
        "script": script,
        "artifacts": ["out/*"],
        "retries": 0,
        "timeout": 120,
        "memory": "128M",
    }
    r = cluster.api("POST", "/api/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    def ended() -> dict[str, Any]:
        v = cluster.job(job_id)
        return v if v["state"] in ("succeeded", "failed", "timed_out", "cancelled") else {}

    view = wait_until(ended, 150, "the job ends")
    assert (view["state"], view["exit_code"], view["node"]) == ("failed", 5, N1), view
    chunks = cluster.api("GET", f"/api/v1/jobs/{job_id}/log").json()["chunks"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    out = "".join(c["data"] for c in chunks if c["stream"] == "stdout").splitlines()
    err = "".join(c["data"] for c in chunks if c["stream"] == "stderr")
    assert out[:2] == [MARKER, "pid 1 in /work"], out
    assert out[2].endswith("-cloud-amd64"), out  # the guest kernel, not the host's
    assert err == "oops\n"
    got = cluster.api("GET", f"/api/v1/jobs/{job_id}/artifacts/out/r.txt")
    assert (got.status_code, got.content) == (200, b"data\n")
