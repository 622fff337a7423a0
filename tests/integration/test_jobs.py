"""Jobs end to end: `scalerunner up` (real mosquitto, real store), real `scalerunner-agent`s running
jobs in the process runtime, the `scalerunner jobs` CLI and the REST API; and a minimal MQTT peer
of our own where a test needs a node that misbehaves on purpose (a lost log chunk).

One coordinator serves the module; the disruptive tests (a node killed mid-job, the coordinator
killed with -9 mid-job) come last, and each test first waits for the state it needs.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scalerunner.protocol.mqtt import (
    Capacity,
    Command,
    JobStatus,
    Kind,
    LogChunk,
    NodeState,
    Reply,
    ResendLog,
    RunJob,
    Telemetry,
    command_args,
    decode,
    encode,
    job_topic,
    node_topic,
)
from tests.integration.test_coordinator import AGENT, CLUSTER, MOSQUITTO, SCALERUNNER, Cluster, wait_until

pytestmark = pytest.mark.slow

A, B, PEER = "rack1-01", "rack1-02", "rack1-03"
TELEMETRY_TIMEOUT = 8.0  # s: a node silent this long with a job is lost (short, but not flaky under load)

INVENTORY = f"""
[cluster]
name = "{CLUSTER}"

[broker]
mode = "managed"
host = "127.0.0.1"
port = 0

[store]
url = "sqlite:///state/scalerunner.db"

[api]
listen = "127.0.0.1:0"

[timeouts]
boot_timeout = 60
telemetry_timeout = {TELEMETRY_TIMEOUT}

[jobs]
lease = 10

[[health_checks]]
arch = "riscv64"
command = ["true"]

[[nodes]]
name = "{A}"
mac = "02:00:00:00:00:01"
arch = "amd64"
labels = ["kvm"]

[[nodes]]
name = "{B}"
mac = "02:00:00:00:00:02"
arch = "amd64"
labels = ["kvm"]

[[nodes]]
name = "{PEER}"
mac = "02:00:00:00:00:03"
arch = "riscv64"
"""


class JobCluster(Cluster):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.inventory.write_text(INVENTORY)
        self.agent_jobs = '[jobs]\nruntime = "process"\n'  # the agents' [jobs] table

    def start_agent(self, node: str) -> Any:
        config = self.root / f"agent-{node}.toml"
        config.write_text(
            f'cluster = "{CLUSTER}"\nnode = "{node}"\nlabels = ["kvm"]\nstate_dir = "agent-{node}"\n'
            f'[broker]\nhost = "127.0.0.1"\nport = {self.broker_port()}\npassword = "{self.password(node)}"\n'
            "keepalive = 1\nreconnect_min = 0.1\nreconnect_max = 0.5\n"
            "[telemetry]\ninterval = 0.3\n"
            "[capacity]\ncpus = 2\nmemory_mb = 2048\nslots = 1\n" + self.agent_jobs
        )
        with (self.root / f"agent-{node}.log").open("ab") as log:
            proc = subprocess.Popen(
                [str(AGENT), "--config", str(config), "--cmdline", str(self.root / "cmdline")],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        self.agents[node] = proc
        return proc

    def wait_job(self, job_id: str, *states: str, timeout: float = 20) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            try:
                data = self.job(job_id)
            except Exception:
                return None  # the coordinator is (re)starting
            return data if data["state"] in states else None

        return wait_until(reached, timeout, f"job {job_id} becomes {'/'.join(states)}")

    def submit(self, *args: str) -> str:
        """`scalerunner jobs submit ARGS`: the id it prints alone on stdout."""
        done = self.cli("jobs", "submit", *args)
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip()
        assert job_id.startswith("j-") and "\n" not in job_id, "submit prints the id alone"
        return job_id

    def post(self, spec: dict[str, Any]) -> str:
        """Submit over the REST API (quicker than a CLI process where the CLI is not the point)."""
        resp = self.api("POST", "/api/v1/jobs", json=spec)
        assert resp.status_code == 201, resp.text
        job_id: str = resp.json()["id"]
        return job_id


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobCluster]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    if not (SCALERUNNER.exists() and AGENT.exists()):
        pytest.skip("the console scripts are not installed (pip install -e .)")
    c = JobCluster(tmp_path_factory.mktemp("jobs"))
    try:
        c.start_coordinator()
        yield c
    finally:
        c.close()


def test_a_job_runs_its_output_comes_back_in_order_and_wait_exits_with_its_code(cluster: JobCluster) -> None:
    cluster.ready(A)
    script = (
        "for i in $(seq 1 300); do echo line $i; done; echo oops >&2;"
        " mkdir -p out; echo hi > out/r.txt; exit 3"
    )
    job_id = cluster.submit("--name", "counting", "--artifact", "out/r.txt", "--", "sh", "-c", script)

    waited = cluster.cli("jobs", "wait", job_id)
    assert waited.returncode == 3, waited.stderr
    job = cluster.job(job_id)
    assert (job["state"], job["exit_code"], job["node"]) == ("failed", 3, A)
    assert [h["state"] for h in job["history"]] == ["queued", "starting", "running", "failed"]

    logs = cluster.cli("jobs", "logs", job_id)
    assert logs.returncode == 0
    assert logs.stdout == "".join(f"line {i}\n" for i in range(1, 301))
    assert "oops" in logs.stderr

    listed = cluster.api("GET", f"/api/v1/jobs/{job_id}/artifacts").json()
    assert [(a["attempt"], a["name"], a["size"]) for a in listed] == [(1, "out/r.txt", 3)]
    got = cluster.cli("jobs", "artifacts", job_id, "--get", "out/r.txt")
    assert got.returncode == 0 and got.stdout == "hi\n"

    shown = cluster.cli_json("jobs", "ls")
    assert shown[0]["id"] == job_id and {"id", "name", "state", "attempts", "exit_code"} <= shown[0].keys()


def test_the_upload_endpoint_takes_only_the_attempts_token(cluster: JobCluster) -> None:
    job_id = cluster.api("GET", "/api/v1/jobs").json()[0]["id"]
    path = f"/api/v1/jobs/{job_id}/attempts/1/artifacts/evil.txt"
    assert cluster.api("PUT", path, content=b"x").status_code == 401  # the operator's token is not it
    assert cluster.api("PUT", path, token="", content=b"x").status_code == 401
    before = cluster.api("GET", f"/api/v1/jobs/{job_id}/artifacts").json()
    assert before and all(a["name"] != "evil.txt" for a in before)


def test_a_bad_spec_is_refused_naming_the_file_and_key(cluster: JobCluster) -> None:
    spec = cluster.root / "bad.yaml"
    spec.write_text("script: echo hi\nmemroy: 2G\n")
    done = cluster.cli("jobs", "submit", str(spec))
    assert done.returncode == 2 and done.stdout == ""
    assert f"{spec}: key 'memroy': unknown key" in done.stderr
    resp = cluster.api("POST", "/api/v1/jobs", json={"script": "true", "cpus": -1})
    assert resp.status_code == 422 and resp.json()["key"] == "cpus"


def test_cancel_stops_a_running_job_and_logs_follow_ends_with_it(cluster: JobCluster) -> None:
    cluster.ready(A)
    job_id = cluster.post({"script": "echo started; exec sleep 60"})
    cluster.wait_job(job_id, "running")
    done = cluster.cli("jobs", "cancel", job_id, "--reason", "no longer needed")
    assert done.returncode == 0, done.stderr
    job = cluster.wait_job(job_id, "cancelled", timeout=15)
    assert "no longer needed" in job["reason"]
    follow = cluster.cli("jobs", "logs", "-f", job_id)
    assert follow.returncode == 0 and follow.stdout == "started\n"
    again = cluster.cli("jobs", "cancel", job_id)
    assert again.returncode == 1 and "is cancelled" in again.stderr


class Peer:
    """A node of our own over MQTT 5 (paho): it says it is online, keeps sending telemetry,
    answers every command (``ok``) and queues it for the test, which plays the attempt by hand."""

    def __init__(self, cluster: JobCluster) -> None:
        self.commands: queue.Queue[Command] = queue.Queue()
        self.stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{PEER}-peer", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(PEER, cluster.password(PEER))
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", cluster.broker_port(), keepalive=10)
        self.client.loop_start()
        self.client.subscribe(node_topic(CLUSTER, PEER, Kind.CMD), qos=1)
        state = NodeState(
            node=PEER,
            status="online",
            conn_seq=int(time.time() * 1000),
            arch="riscv64",
            capacity=Capacity(cpus=1, memory_mb=512),
        )
        self.client.publish(node_topic(CLUSTER, PEER, Kind.STATE), encode(state), qos=1, retain=True)
        self.ticker = threading.Thread(target=self._telemetry, daemon=True)
        self.ticker.start()

    def _telemetry(self) -> None:
        while not self.stop.is_set():
            tele = Telemetry(node=PEER, ts=time.time(), load1=0.1, cpu_pct=1, mem_used_mb=1, mem_total_mb=512)
            self.client.publish(node_topic(CLUSTER, PEER, Kind.TELEMETRY), encode(tele), qos=0)
            self.stop.wait(0.3)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        cmd = decode(msg.payload, Command)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = msg.properties.CorrelationData  # type: ignore[union-attr]
        reply = msg.properties.ResponseTopic  # type: ignore[union-attr]
        self.client.publish(reply, encode(Reply(ok=True)), qos=1, properties=props)
        self.commands.put(cmd)

    def next(self, cmd: str, timeout: float = 15) -> Command:
        """The next command named ``cmd`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.commands.get(timeout=max(deadline - time.monotonic(), 0.01))
            if got.cmd == cmd:
                return got

    def status(self, run: RunJob, phase: str, **kw: Any) -> None:
        s = JobStatus(node=PEER, job=run.job, attempt=run.attempt, phase=phase, **kw)  # type: ignore[arg-type]
        self.client.publish(
            job_topic(CLUSTER, PEER, run.job, Kind.JOB_STATUS), encode(s), qos=1
        ).wait_for_publish(5)

    def chunk(self, run: RunJob, seq: int, text: str) -> None:
        c = LogChunk(node=PEER, job=run.job, attempt=run.attempt, seq=seq, stream="stdout", data=text)
        self.client.publish(
            job_topic(CLUSTER, PEER, run.job, Kind.JOB_LOG), encode(c), qos=1
        ).wait_for_publish(5)

    def close(self) -> None:
        self.stop.set()
        self.ticker.join()
        offline = NodeState(node=PEER, status="offline", conn_seq=int(time.time() * 1000))
        self.client.publish(
            node_topic(CLUSTER, PEER, Kind.STATE), encode(offline), qos=1, retain=True
        ).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


def test_a_new_node_passes_its_health_check_job_then_a_lost_log_chunk_is_asked_for_again(
    cluster: JobCluster,
) -> None:
    cluster.ready(A)  # the other nodes are amd64: only the riscv64 peer matches
    peer = Peer(cluster)
    try:
        cluster.wait_state(PEER, "idle")
        # Its health is unknown: the lifecycle asks for a check, the inventory's riscv64 check runs.
        check = command_args(peer.next("run"), RunJob)
        assert check.argv == ["true"]
        assert cluster.job(check.job)["name"] == f"health check of {PEER}"
        assert cluster.node(PEER)["health"] == "unknown"
        peer.status(check, "started")
        peer.status(check, "finished", end="exited", exit_code=0)
        wait_until(lambda: cluster.node(PEER)["health"] == "good", 10, f"{PEER} becomes good")
        assert f"log {check.job}" in cluster.node(PEER)["health_reason"]

        job_id = cluster.post({"command": ["echo", "x"], "arch": "riscv64"})
        run = command_args(peer.next("run"), RunJob)
        assert run.job == job_id and run.argv == ["echo", "x"] and run.upload_token
        peer.status(run, "started")
        peer.chunk(run, 0, "one\n")
        peer.chunk(run, 2, "three\n")  # chunk 1 "lost"
        peer.status(run, "finished", end="exited", exit_code=0, log_chunks=3)
        resend = command_args(peer.next("resend_log"), ResendLog)
        assert (resend.job, resend.attempt, resend.seqs) == (job_id, 1, [1])
        partial = cluster.api("GET", f"/api/v1/jobs/{job_id}/log").json()
        assert [c["data"] for c in partial["chunks"]] == ["one\n"] and not partial["done"]
        peer.chunk(run, 1, "two\n")
        follow = cluster.cli("jobs", "logs", "-f", job_id)
        assert follow.stdout == "one\ntwo\nthree\n"
        assert cluster.wait_job(job_id, "succeeded")["exit_code"] == 0
    finally:
        peer.close()


# -- disruptive: last ------------------------------------------------------------------------------


def test_a_node_killed_mid_job_requeues_it_and_it_completes_elsewhere(cluster: JobCluster) -> None:
    cluster.ready(A)
    cluster.ready(B)
    job_id = cluster.post({"script": "sleep 3; echo finished", "labels": ["kvm"]})
    first = cluster.wait_job(job_id, "running")["node"]
    other = B if first == A else A
    cluster.kill_agent(first, signal.SIGKILL)
    job = cluster.wait_job(job_id, "succeeded", timeout=40)
    assert [(a["number"], a["node"], a["state"]) for a in job["attempts"]] == [
        (1, first, "lost"),
        (2, other, "succeeded"),
    ]
    assert "re-queued for attempt 2" in " ".join(h["reason"] for h in job["history"])
    logs = cluster.cli("jobs", "logs", job_id)
    assert logs.stdout.endswith("finished\n")


def test_the_coordinator_killed_mid_job_loses_nothing_and_runs_nothing_twice(cluster: JobCluster) -> None:
    for node in (A, B):
        cluster.ready(node)
    gate = cluster.root / "go"  # the job runs until the test opens the gate, after the restart
    running = cluster.post({"script": f"while [ ! -e {gate} ]; do sleep 0.1; done; echo survived"})
    cluster.wait_job(running, "running")
    queued = [cluster.post({"command": ["echo", f"q{i}"]}) for i in range(3)]
    cluster.kill_coordinator()
    cluster.start_coordinator()
    assert cluster.job(running)["state"] in ("running", "starting")
    for q in queued:
        assert cluster.wait_job(q, "succeeded", timeout=40)["exit_code"] == 0
    gate.touch()
    job = cluster.wait_job(running, "succeeded", timeout=40)
    assert len(job["attempts"]) == 1, "the running attempt was kept, not run again"
    assert cluster.cli("jobs", "logs", running).stdout == "survived\n"
    metrics = cluster.metrics()
    assert metrics[("scalerunner_jobs_queued", ())] == 0
    assert metrics[("scalerunner_jobs_running", ())] == 0


def test_a_job_that_ends_while_the_coordinator_is_down_is_not_run_again(cluster: JobCluster) -> None:
    """The agent's ``finished`` reached the broker but not the coordinator (it was down, and its
    managed broker is replaced when it starts again): the agent says it again when the new
    coordinator announces itself, so the attempt is closed instead of waiting out its lease and
    running a second time."""
    for node in (A, B):
        cluster.ready(node)
    gate = cluster.root / "go-while-down"
    job_id = cluster.post({"script": f"while [ ! -e {gate} ]; do sleep 0.1; done; echo ended"})
    cluster.wait_job(job_id, "running")
    cluster.kill_coordinator()
    gate.touch()
    time.sleep(2)  # the job ends and its agent reports it while no coordinator listens
    cluster.start_coordinator()
    job = cluster.wait_job(job_id, "succeeded", timeout=40)
    assert [(a["number"], a["state"]) for a in job["attempts"]] == [(1, "succeeded")], job["attempts"]
    # its log went to the old broker too: the gap that ``finished`` reveals is asked for again
    deadline = time.monotonic() + 20
    while (out := cluster.cli("jobs", "logs", job_id).stdout) != "ended\n" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert out == "ended\n"


def test_submit_network_flag_reaches_the_spec_and_without_it_only_lo(cluster: JobCluster) -> None:
    cluster.ready(A)
    with_net = cluster.submit("--name", "net", "--network", "--", "true")
    without = cluster.submit("--name", "no-net", "--", "sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1")
    assert cluster.job(with_net)["spec"]["network"] is True
    assert cluster.job(without)["spec"]["network"] is False
    cluster.wait_job(without, "succeeded")
    logs = cluster.cli("jobs", "logs", without)
    assert logs.stdout.split() == ["lo"], logs.stdout
