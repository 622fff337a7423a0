"""A GitHub Actions runner in a VM: test_github_runners.py's harness (`scalerunner up` with a
[github] pool, the GitHub stand-in, signed webhooks), but the agent runs jobs on the `vm` runtime
and the pool's image (busybox, from a real registry on loopback) is booted in a TCG guest.

The runner is a shell version of fake_runner.py (the image has no Python): inside the guest it
fetches its JIT config from the coordinator through the claim URL (127.0.0.1 in the job's env,
10.0.2.2 as the vm runtime hands it over), then polls the stand-in for a job, takes it and exits.
The stand-in's URL in the config is on the host's loopback too (real GitHub is not), so the script
points it at 10.0.2.2 itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.github_standin import GitHubStandIn
from tests.integration.oci_fixtures import APPLETS, Registry, registry  # noqa: F401 (a fixture)
from tests.integration.test_coordinator import AGENT, CLUSTER, MOSQUITTO, SCALERUNNER
from tests.integration.test_github_runners import (
    IDLE_TIMEOUT,
    LABELS,
    NODE,
    REPO,
    SECRET,
    TOKEN,
    GitHubCluster,
)

pytestmark = [pytest.mark.slow, pytest.mark.vm, pytest.mark.timeout(240)]

MARKER = "actions-runner-image"
RUNNER = r"""
cfg=$(echo "$2" | base64 -d)
field() { echo "$cfg" | sed -n "s/.*\"$1\": \"\{0,1\}\([^\",}]*\).*/\1/p"; }
url=$(field url | sed 's#//127\.0\.0\.1:#//10.0.2.2:#')
id=$(field runner_id)
echo "runner $(field name) listening for jobs in $(uname -r)"
call() { wget -q -O - --post-data '{}' --header 'Content-Type: application/json' "$url/_runner/$id/$1"; }
while :; do
    answer=$(call poll) || { echo "poll failed" >&2; exit 2; }
    case "$answer" in
        *'"gone"'*) echo "runner removed"; exit 1 ;;
        *'"job"'*) break ;;
    esac
    sleep 1
done
job=$(echo "$answer" | sed -n 's/.*"job": \([0-9]*\).*/\1/p')
echo "running job $job"
call done > /dev/null
echo "job $job done"
"""


class GitHubVmCluster(GitHubCluster):
    def __init__(self, root: Path, standin: GitHubStandIn, image: str, registry_host: str) -> None:
        super().__init__(root, standin)
        self.registry_host = registry_host
        self.agent_jobs = f'[jobs]\nruntime = "vm"\ninsecure_registries = ["{registry_host}"]\n'
        command = ", ".join(
            json.dumps(a) for a in ["/bin/sh", "-c", RUNNER, "runner", "--jitconfig", "{jitconfig}"]
        )
        self.write_inventory(
            standin,
            f"""
[[github.pools]]
name = "widgets-vm"
scope = "{REPO}"
labels = ["self-hosted", "scalerunner"]
image = "{image}"
node_labels = ["kvm"]
memory_mb = 128
timeout = 150
command = [{command}]
""",
            lease=15,
            idle_timeout=IDLE_TIMEOUT * 15,
        )


@pytest.fixture
def standin() -> Iterator[GitHubStandIn]:
    s = GitHubStandIn(SECRET, TOKEN)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def gh_vm(tmp_path: Path, standin: GitHubStandIn, registry: Registry) -> Iterator[GitHubVmCluster]:  # noqa: F811
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    if not (SCALERUNNER.exists() and AGENT.exists()):
        pytest.skip("the console scripts are not installed (pip install -e .)")
    applets = (*APPLETS, "wget", "base64", "sed", "uname")
    image = registry.push_busybox(tmp_path / "build", "test/runner:1", marker=MARKER, applets=applets)
    (tmp_path / "cluster").mkdir()
    c = GitHubVmCluster(tmp_path / "cluster", standin, image, registry.host)
    try:
        c.start_coordinator()
        standin.webhook_url = c.url + "/webhooks/github"
        c.ready(NODE, timeout=30)
        yield c
    finally:
        c.close()


def test_a_runner_in_a_vm_claims_its_jit_config_through_the_guest_network_and_takes_the_job(
    gh_vm: GitHubVmCluster, standin: GitHubStandIn
) -> None:
    job = standin.add_job(601, REPO, LABELS)
    assert standin.deliver(job, "queued", delivery="delivery-601").status_code == 202
    sr = gh_vm.runner_job(601, "succeeded", "failed", "cancelled", "timed_out", timeout=180)
    log = gh_vm.api("GET", f"/api/v1/jobs/{sr['id']}/log").json()["chunks"]
    out = "".join(c["data"] for c in log if c["stream"] == "stdout")
    err = "".join(c["data"] for c in log if c["stream"] == "stderr")
    assert sr["state"] == "succeeded" and sr["exit_code"] == 0, (sr["state"], out, err)
    name = f"{CLUSTER}-601-1"
    lines = out.splitlines()
    # the config it fetched is the one GitHub made for this runner; it ran in the guest's kernel
    assert lines[0].startswith(f"runner {name} listening for jobs in "), lines
    assert lines[0].endswith("-cloud-amd64"), lines
    assert lines[1:] == ["running job 601", "job 601 done"], lines
    assert standin.jobs[601].status == "completed" and standin.jobs[601].runner_name == name
    # the job asked for network, and its env holds the coordinator's loopback URL (the vm
    # runtime, not the coordinator, points it at 10.0.2.2)
    spec = sr["spec"]
    assert spec["network"] is True
    assert spec["env"]["SCALERUNNER_JIT_URL"].startswith("http://127.0.0.1:")
