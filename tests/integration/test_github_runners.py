"""GitHub Actions runners end to end: `scalerunner up` with a [github] section (real mosquitto,
real store), a real `scalerunner-agent` on the process runtime, and a local HTTP server standing
in for GitHub (github_standin.py: the REST API, the runner's side, signed webhook deliveries).
The runner is fake_runner.py: it starts with --jitconfig, takes one job from the stand-in and
exits, as the real one does from the coordinator's point of view.

One coordinator serves the module; each test queues its own workflow job ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.github_standin import GitHubStandIn, WJob
from tests.integration.test_coordinator import AGENT, CLUSTER, MOSQUITTO, SCALERUNNER, wait_until
from tests.integration.test_jobs import JobCluster

pytestmark = pytest.mark.slow

NODE = "rack1-01"
REPO = "acme/widgets"
ORG = "acme-org"
LABELS = ["self-hosted", "Linux", "scalerunner"]
SECRET = b"it's a secret to everybody"
TOKEN = "ghs_standin_installation_token"
IDLE_TIMEOUT = 4.0
FAKE_RUNNER = Path(__file__).with_name("fake_runner.py")


class GitHubCluster(JobCluster):
    def __init__(self, root: Path, standin: GitHubStandIn) -> None:
        super().__init__(root)
        (root / "gh-token").write_text(TOKEN + "\n")
        (root / "gh-secret").write_bytes(SECRET + b"\n")
        self.configs = root / "runner-configs.txt"
        command = [
            sys.executable,
            str(FAKE_RUNNER),
            "--jitconfig",
            "{jitconfig}",
            "--record",
            str(self.configs),
        ]
        argv = ", ".join(f'"{a}"' for a in command)
        self.write_inventory(
            standin,
            f"""
[[github.pools]]
name = "widgets"
scope = "{REPO}"
labels = ["self-hosted", "scalerunner"]
runner_group_id = 7
node_labels = ["kvm"]
memory_mb = 256
timeout = 120
command = [{argv}]

[[github.pools]]
name = "org"
scope = "{ORG}"
labels = ["self-hosted", "org-pool"]
memory_mb = 256
timeout = 120
command = [{argv}]
""",
        )

    def write_inventory(
        self, standin: GitHubStandIn, pools: str, *, lease: int = 10, idle_timeout: float = IDLE_TIMEOUT
    ) -> None:
        """One node labelled kvm and a [github] section on the stand-in, with ``pools``."""
        self.inventory.write_text(
            f"""
[cluster]
name = "{CLUSTER}"

[broker]
host = "127.0.0.1"
port = 0

[api]
listen = "127.0.0.1:0"

[timeouts]
boot_timeout = 60
telemetry_timeout = 8

[jobs]
lease = {lease}

[[nodes]]
name = "{NODE}"
mac = "02:00:00:00:00:01"
arch = "amd64"
labels = ["kvm"]

[github]
api_url = "{standin.url}"
token_file = "gh-token"
webhook_secret_file = "gh-secret"
reconcile_interval = 2
idle_timeout = {idle_timeout}
"""
            + pools
        )

    def runner_jobs(self, gh_job: int) -> list[dict[str, Any]]:
        resp = self.api("GET", "/api/v1/jobs", params={"limit": 1000})
        assert resp.status_code == 200, resp.text
        return [j for j in resp.json() if f"{CLUSTER}-{gh_job}-" in j["name"]]

    def runner_job(self, gh_job: int, *states: str, timeout: float = 30) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            jobs = self.runner_jobs(gh_job)
            return jobs[0] if jobs and (not states or jobs[0]["state"] in states) else None

        return wait_until(found, timeout, f"the runner job of workflow job {gh_job} is {'/'.join(states)}")

    def log_text(self) -> str:
        return (self.root / f"up-{self.starts}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def standin() -> Iterator[GitHubStandIn]:
    s = GitHubStandIn(SECRET, TOKEN)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def gh(tmp_path_factory: pytest.TempPathFactory, standin: GitHubStandIn) -> Iterator[GitHubCluster]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    if not (SCALERUNNER.exists() and AGENT.exists()):
        pytest.skip("the console scripts are not installed (pip install -e .)")
    c = GitHubCluster(tmp_path_factory.mktemp("github"), standin)
    try:
        c.start_coordinator()
        standin.webhook_url = c.url + "/webhooks/github"
        c.ready(NODE)
        yield c
    finally:
        c.close()


def test_a_bad_or_missing_signature_is_refused_and_nothing_is_queued(
    gh: GitHubCluster, standin: GitHubStandIn
) -> None:
    job = WJob(id=101, run_id=1010, repo=REPO, labels=LABELS)  # not listed by the stand-in's API
    assert standin.deliver(job, "queued", secret=b"not the secret").status_code == 401
    assert standin.deliver(job, "queued", signature=None).status_code == 401
    assert standin.deliver(job, "queued", signature="sha256=" + "0" * 64).status_code == 401
    # signed, but not a workflow_job payload: 400 naming the field, and it is not remembered
    body = b'{"action": "queued", "repository": {"full_name": "acme/widgets"}}'
    mac = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    headers = {
        "X-GitHub-Event": "workflow_job",
        "X-GitHub-Delivery": "d-101",
        "X-Hub-Signature-256": f"sha256={mac}",
    }
    bad = httpx.post(standin.webhook_url, content=body, headers=headers, timeout=10)
    assert bad.status_code == 400 and "workflow_job" in bad.json()["error"]
    ping = httpx.post(
        standin.webhook_url, content=body, headers={**headers, "X-GitHub-Event": "ping"}, timeout=10
    )
    assert ping.status_code == 200
    huge = httpx.post(standin.webhook_url, content=b" " * (25 * 2**20 + 1), headers=headers, timeout=30)
    assert huge.status_code == 413
    responses = gh.api("GET", "/openapi.json").json()["paths"]["/webhooks/github"]["post"]["responses"]
    assert {"200", "202", "400", "401", "413", "503"} <= set(responses), (
        "the spec lists what the route answers"
    )
    time.sleep(1.0)
    assert standin.jit_requests(f"{CLUSTER}-101-") == [], "no runner was asked for"
    assert gh.runner_jobs(101) == [], "no job was queued"


def test_a_queued_job_gets_a_jit_runner_that_takes_it_and_exits(
    gh: GitHubCluster, standin: GitHubStandIn
) -> None:
    job = standin.add_job(201, REPO, LABELS)
    resp = standin.deliver(job, "queued", delivery="delivery-201")
    assert resp.status_code == 202, resp.text
    sr = gh.runner_job(201, "succeeded")
    (jit,) = standin.jit_requests(f"{CLUSTER}-201-")
    assert jit.path == f"/repos/{REPO}/actions/runners/generate-jitconfig"
    assert jit.body["name"] == f"{CLUSTER}-201-1"
    assert jit.body["runner_group_id"] == 7
    assert jit.body["labels"] == LABELS, "the runner registers with the job's labels"
    assert jit.headers["Authorization"] == f"Bearer {TOKEN}"
    assert jit.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert standin.jobs[201].status == "completed" and standin.jobs[201].runner_name == f"{CLUSTER}-201-1"
    assert sr["exit_code"] == 0 and sr["project"] == "github"
    # The runner was started with the config GitHub made for it, and that secret is nowhere else.
    issued = [r for r in standin.runners.values() if r.name == f"{CLUSTER}-201-1"]
    assert len(issued) == 1
    started_with = gh.configs.read_text().split()
    assert len(started_with) == 1
    secret = started_with[0]
    assert f'"runner_id": {issued[0].id}' in base64.b64decode(secret).decode()
    shown = gh.api("GET", f"/api/v1/jobs/{sr['id']}").text + gh.cli("jobs", "show", sr["id"], "--json").stdout
    logs = gh.cli("jobs", "logs", sr["id"]).stdout
    assert "running job 201" in logs
    for where, text in (("API", shown), ("job log", logs), ("coordinator log", gh.log_text())):
        assert secret not in text, f"the JIT config shows in the {where}"
    for db in (gh.state / "scalerunner.db", gh.state / "github.db"):
        data = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        assert secret.encode() not in data, f"the JIT config is stored in {db.name}"
    # The claim is single-use: the token in the job's env fetches nothing now.
    claim = sr["spec"]["env"]["SCALERUNNER_JIT_TOKEN"]
    again = gh.api("GET", "/api/v1/github/jitconfig", token=claim)
    assert again.status_code == 401


def test_a_replayed_delivery_is_ignored(gh: GitHubCluster, standin: GitHubStandIn) -> None:
    job = standin.add_job(301, REPO, LABELS, hold=True)
    assert standin.deliver(job, "queued", delivery="delivery-301").status_code == 202
    gh.runner_job(301)
    standin.jobs[301].status = "completed"  # gone from the queue on "GitHub"
    replay = standin.deliver(job, "queued", delivery="delivery-301")
    assert replay.status_code == 200 and "replayed" in replay.json()["status"]
    # even once its runner is gone (cancelled below), the replay makes no second runner
    standin.deliver(job, "completed", delivery="delivery-301-done")
    gh.runner_job(301, "cancelled")
    standin.deliver(job, "queued", delivery="delivery-301")
    time.sleep(1.0)
    assert len(standin.jit_requests(f"{CLUSTER}-301-")) == 1


def test_a_job_whose_labels_no_pool_takes_is_ignored(gh: GitHubCluster, standin: GitHubStandIn) -> None:
    job = standin.add_job(401, REPO, ["self-hosted", "windows"])
    resp = standin.deliver(job, "queued")
    assert resp.status_code == 202 and "no pool" in resp.json()["status"]
    time.sleep(2.5)  # a reconcile pass too
    assert standin.jit_requests(f"{CLUSTER}-401-") == [] and gh.runner_jobs(401) == []
    standin.jobs[401].status = "completed"


def test_an_org_pool_registers_its_runner_with_the_organisation(
    gh: GitHubCluster, standin: GitHubStandIn
) -> None:
    job = standin.add_job(501, f"{ORG}/tools", ["self-hosted", "org-pool"])
    assert standin.deliver(job, "queued").status_code == 202
    gh.runner_job(501, "succeeded")
    (jit,) = standin.jit_requests(f"{CLUSTER}-501-")
    assert jit.path == f"/orgs/{ORG}/actions/runners/generate-jitconfig"
    assert jit.body["runner_group_id"] == 1


def test_a_dropped_webhook_is_picked_up_by_the_reconciler(gh: GitHubCluster, standin: GitHubStandIn) -> None:
    standin.add_job(601, REPO, LABELS)  # queued on "GitHub"; its webhook is never delivered
    gh.runner_job(601, "succeeded", timeout=40)
    assert standin.jobs[601].status == "completed"
    assert re.search(r"reconcile: queued job 601 had no runner", gh.log_text())


def test_webhooks_and_the_reconciler_at_once_make_one_runner(
    gh: GitHubCluster, standin: GitHubStandIn
) -> None:
    job = standin.add_job(701, REPO, LABELS)
    threads = [threading.Thread(target=standin.deliver, args=(job, "queued")) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gh.runner_job(701, "succeeded")
    time.sleep(2.5)  # a reconcile pass after it, too
    assert len(standin.jit_requests(f"{CLUSTER}-701-")) == 1
    assert len(gh.runner_jobs(701)) == 1


def test_a_job_cancelled_on_github_ends_its_runner(gh: GitHubCluster, standin: GitHubStandIn) -> None:
    job = standin.add_job(801, REPO, LABELS, duration=600)
    standin.deliver(job, "queued")
    wait_until(lambda: standin.jobs[801].status == "in_progress", 30, "the runner takes the job")
    sr = gh.runner_job(801, "running")
    standin.cancel(801)
    ended = gh.wait_job(sr["id"], "cancelled", timeout=20)
    assert "cancelled on GitHub" in ended["reason"] or any(
        "cancelled on GitHub" in h["reason"] for h in ended["history"]
    )


def test_an_idle_runner_ends_after_the_timeout_and_frees_its_node(
    gh: GitHubCluster, standin: GitHubStandIn
) -> None:
    job = standin.add_job(901, REPO, LABELS, hold=True)  # no runner will ever be handed it
    standin.deliver(job, "queued")
    sr = gh.runner_job(901, "running")
    started = time.monotonic()
    gh.wait_job(sr["id"], "cancelled", timeout=IDLE_TIMEOUT + 15)
    assert time.monotonic() - started >= IDLE_TIMEOUT - 1.5
    runner = next(r for r in standin.runners.values() if r.name == f"{CLUSTER}-901-1")
    assert runner.deleted, "the runner's registration was removed from GitHub"
    assert any(r.method == "GET" and r.path.endswith(f"/runners/{runner.id}") for r in standin.requests)
    # the node is free again: an ordinary job runs on it
    other = gh.post({"command": ["true"], "labels": ["kvm"]})
    assert gh.wait_job(other, "succeeded", timeout=20)["node"] == NODE
    standin.jobs[901].status = "completed"


def test_github_down_is_logged_and_retried(gh: GitHubCluster, standin: GitHubStandIn) -> None:
    standin.down = True
    try:
        job = standin.add_job(1001, REPO, LABELS)
        assert standin.deliver(job, "queued").status_code == 202
        pattern = (
            rf"cannot make runner {CLUSTER}-1001-1: GitHub API POST /repos/{REPO}/actions/runners/"
            r"generate-jitconfig: HTTP 503"
        )
        wait_until(lambda: re.search(pattern, gh.log_text()), 15, "the failed request is logged")
    finally:
        standin.down = False
    gh.runner_job(1001, "succeeded", timeout=40)
    assert len(standin.jit_requests(f"{CLUSTER}-1001-")) >= 2, "the request was made again"


def test_the_webhook_answers_at_once_while_the_api_is_slow(gh: GitHubCluster, standin: GitHubStandIn) -> None:
    standin.delay = 3.0
    try:
        job = standin.add_job(1101, REPO, LABELS)
        t0 = time.monotonic()
        resp = standin.deliver(job, "queued")
        answered = time.monotonic() - t0
        assert resp.status_code == 202
        assert answered < 1.0, f"the webhook took {answered:.2f}s while the API was slow"
        wait_until(lambda: standin.jit_requests(f"{CLUSTER}-1101-"), 10, "the JIT request is made")
    finally:
        standin.delay = 0.0
    gh.runner_job(1101, "succeeded", timeout=40)


def test_runner_records_and_metrics_show_what_became_of_each_job(
    gh: GitHubCluster, standin: GitHubStandIn
) -> None:
    assert gh.api("GET", "/api/v1/github/runners", token="").status_code == 401
    resp = gh.api("GET", "/api/v1/github/runners", params={"limit": 1000})
    assert resp.status_code == 200, resp.text
    records = {r["gh_job"]: r for r in resp.json()}
    assert records[201]["state"] == "done" and records[201]["job"] == gh.runner_jobs(201)[0]["id"]
    assert records[901]["state"] == "idle_timeout" and records[801]["state"] == "cancelled"
    assert records[1001]["requests"] == 2 and records[1001]["state"] == "done"
    assert 101 not in records and 401 not in records
    secrets = gh.configs.read_text().split()
    assert secrets and not any(s in resp.text for s in secrets)
    metrics = gh.metrics()
    assert metrics[("scalerunner_github_bad_signature_total", ())] >= 3
    assert metrics[("scalerunner_github_replayed_total", ())] >= 1
    assert metrics[("scalerunner_github_runners", (("state", "idle_timeout"),))] >= 1
    assert metrics[("scalerunner_github_api_errors_total", ())] >= 1


def test_after_a_kill_9_the_records_and_the_delivery_memory_hold(
    gh: GitHubCluster, standin: GitHubStandIn
) -> None:
    job = standin.add_job(1201, REPO, LABELS, hold=True)
    standin.deliver(job, "queued", delivery="delivery-1201")
    sr = gh.runner_job(1201, "running")
    wait_until(lambda: "github job 1201: idle" in gh.log_text(), 10, "the runner is idle")
    # killed only once the runner has claimed its JIT config (a claim is held in memory: a runner
    # that had not claimed before a restart fails and is replaced, docs/github.md)
    wait_until(lambda: gh.configs.exists() and gh.configs.read_text().split(), 20, "runner has its config")
    gh.kill_coordinator()
    gh.start_coordinator()
    standin.webhook_url = gh.url + "/webhooks/github"
    replay = standin.deliver(job, "queued", delivery="delivery-1201")
    assert replay.status_code == 200 and "replayed" in replay.json()["status"]
    again = standin.deliver(job, "queued", delivery="delivery-1201-new")  # a new id: the record says no
    assert again.status_code == 202
    # the idle runner kept running through the restart, and its idle timeout still ends it
    ended = gh.wait_job(sr["id"], "cancelled", timeout=IDLE_TIMEOUT + 20)
    assert "no job within" in ended["reason"] or any("no job within" in h["reason"] for h in ended["history"])
    assert len(standin.jit_requests(f"{CLUSTER}-1201-")) == 1 and len(gh.runner_jobs(1201)) == 1
    standin.jobs[1201].status = "completed"
