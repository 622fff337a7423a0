"""The coordinator end to end: `scalerunner up`, its mosquitto, real agents, the CLI and the REST API.

Everything runs as the operator runs it: ``scalerunner up --config inventory --api-port 0`` is a
subprocess (SIGKILL is a real crash), each node is a real ``scalerunner-agent`` subprocess logging
in with its own broker password, the CLI is the ``scalerunner`` console script and the REST API is
spoken with httpx. One coordinator serves the whole module (it is restarted in place by the crash
test); the disruptive tests come last, and each test first waits for the state it needs, so any
one of them also runs alone. The tests of an ``up`` that cannot start use their own directory.

The module fixture stops every process it started, whatever happened: agents and coordinator are
terminated, then killed, then reaped, and a mosquitto left behind by a killed coordinator is ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scalerunner.coordinator.broker.credentials import load_credentials, node_password
from scalerunner.protocol.mqtt import Kind, NodeState, Telemetry, decode, encode, node_topic
from tests.integration.broker_fixtures import MqttProbe

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SCALERUNNER = BIN / "scalerunner"
AGENT = BIN / "scalerunner-agent"
MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")

CLUSTER = "lab"
N1, N2, N3 = "rack1-01", "rack1-02", "rack1-03"  # N3 never gets an agent
TELEMETRY_TIMEOUT = 3.0  # s, the inventory's [timeouts] telemetry_timeout
KEEPALIVE = 1  # s, the agents' MQTT keepalive: the broker sends a Will after 1.5 of them
INTERVAL = 0.3  # s, the agents' telemetry interval
CONNECTED = ("online", "idle", "busy", "draining")

T = TypeVar("T")

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

[[nodes]]
name = "{N1}"
mac = "02:00:00:00:00:01"
arch = "amd64"
labels = ["kvm", "pool=ci"]
rack = {{ row = 1, position = 1 }}

[[nodes]]
name = "{N2}"
mac = "02:00:00:00:00:02"
arch = "arm64"
labels = ["pi4"]

[[nodes]]
name = "{N3}"
mac = "02:00:00:00:00:03"
arch = "riscv64"
"""


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something true; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what} (last: {value!r})")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Terminate, then kill, then reap: the process is gone when this returns."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


class Cluster:
    """A coordinator subprocess with its state directory, the agents, and ways to drive them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inventory = root / "scalerunner.toml"
        self.inventory.write_text(INVENTORY)
        self.state = root / "state"
        self.home = root / "home"  # SCALERUNNER_HOME: where `up` records api.json
        (root / "cmdline").write_text("console=ttyS0 quiet\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SCALERUNNER_")}
        self.env.update({"SCALERUNNER_HOME": str(self.home), "COLUMNS": "200"})
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped_agents: list[subprocess.Popen[bytes]] = []
        self.url = ""
        self.token = ""
        self.agent_extra = ""  # more TOML at the end of every agent's config

    # -- processes ---------------------------------------------------------------------------

    def start_coordinator(self) -> None:
        self.starts += 1
        out = self.root / f"up-{self.starts}.out"
        with out.open("wb") as stdout, (self.root / f"up-{self.starts}.log").open("wb") as stderr:
            self.coordinator = subprocess.Popen(
                [str(SCALERUNNER), "up", "--config", str(self.inventory), "--api-port", "0"],
                cwd=self.root,
                env=self.env,
                stdout=stdout,
                stderr=stderr,
            )
        proc = self.coordinator

        def printed_url() -> str:
            assert proc.poll() is None, f"scalerunner up exited {proc.returncode}: {self.coordinator_log()}"
            return out.read_text().strip()

        url = wait_until(printed_url, 20, "scalerunner up prints the API URL")
        saved = json.loads((self.home / "api.json").read_text())
        assert saved["url"] == url, "api.json records the URL that `up` printed"
        self.url, self.token = url, saved["token"]

    def kill_coordinator(self) -> None:
        assert self.coordinator is not None
        self.coordinator.send_signal(signal.SIGKILL)
        self.coordinator.wait()

    def coordinator_log(self) -> str:
        return (self.root / f"up-{self.starts}.log").read_text(errors="replace")[-3000:]

    def broker_port(self) -> int:
        conf = (self.state / "broker" / "mosquitto.conf").read_text()
        return next(int(line.split()[1]) for line in conf.splitlines() if line.startswith("listener "))

    def broker_pid(self) -> int | None:
        try:
            return int((self.state / "broker" / "mosquitto.pid").read_text())
        except (OSError, ValueError):
            return None

    def password(self, user: str) -> str:
        if user == "coordinator":
            return load_credentials(self.state / "broker-credentials.json")["coordinator"]
        return node_password(self.state / "broker-credentials.json", user)

    def start_agent(self, node: str) -> subprocess.Popen[bytes]:
        config = self.root / f"agent-{node}.toml"
        config.write_text(
            f'cluster = "{CLUSTER}"\nnode = "{node}"\nlabels = ["kvm"]\nstate_dir = "."\n'
            f'[broker]\nhost = "127.0.0.1"\nport = {self.broker_port()}\npassword = "{self.password(node)}"\n'
            f"keepalive = {KEEPALIVE}\nreconnect_min = 0.1\nreconnect_max = 0.5\n"
            f"[telemetry]\ninterval = {INTERVAL}\n{self.agent_extra}"
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

    def ensure_agent(self, node: str, timeout: float = 15) -> None:
        """The node's agent runs and the node is idle (after its telemetry)."""
        proc = self.agents.get(node)
        if proc is None or proc.poll() is not None:
            self.start_agent(node)
        self.wait_state(node, "idle", timeout=timeout)

    def ready(self, node: str, timeout: float = 15) -> None:
        """The node's agent runs, it is idle and its health is good (so it takes jobs)."""
        self.ensure_agent(node, timeout)
        if self.node(node)["health"] != "good":
            resp = self.api("PUT", f"/api/v1/nodes/{node}/health", json={"health": "good", "reason": "test"})
            assert resp.status_code == 200, resp.text

    def job(self, job_id: str) -> dict[str, Any]:
        resp = self.api("GET", f"/api/v1/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    def kill_agent(self, node: str, sig: signal.Signals = signal.SIGKILL) -> None:
        proc = self.agents.pop(node)
        proc.send_signal(sig)
        proc.wait(10)
        self.stopped_agents.append(proc)

    def agent_state(self, node: str) -> NodeState:
        """What the node's agent says of itself: its retained state on the broker."""
        with self.probe("coordinator") as watch:
            watch.subscribe(node_topic(CLUSTER, node, Kind.STATE))
            return decode(watch.next_message().payload, NodeState)

    def close(self) -> None:
        procs = [*self.agents.values(), *self.stopped_agents]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            stop_process(proc)
        if self.coordinator is not None:
            stop_process(self.coordinator, grace=10)
        end_leftover_broker(self.state)

    # -- the CLI and the REST API ------------------------------------------------------------

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCALERUNNER), *args],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=self.root,
        )

    def cli_json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def api(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        """A REST call with the real token (``token=None``), another one, or none (``""``)."""
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"} if token != "" else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def node(self, name: str) -> dict[str, Any]:
        resp = self.api("GET", f"/api/v1/nodes/{name}")
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        return data

    def events(self, node: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 1000}
        if node is not None:
            params["node"] = node
        resp = self.api("GET", "/api/v1/events", params=params)
        assert resp.status_code == 200, resp.text
        events: list[dict[str, Any]] = resp.json()
        return events

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of GET /metrics, parsed as Prometheus text: (name, labels) -> value."""
        resp = httpx.get(self.url + "/metrics", timeout=10)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text)
            for s in family.samples
        }

    def wait_state(self, node: str, *states: str, timeout: float = 10) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            try:
                view = self.node(node)
            except httpx.HTTPError:
                return None  # the coordinator is (re)starting
            return view if view["state"] in states else None

        return wait_until(reached, timeout, f"{node} becomes {'/'.join(states)}")

    def probe(self, user: str) -> MqttProbe:
        """A connected MQTT 5 client logged in as ``user`` with that user's real password."""
        probe = MqttProbe("127.0.0.1", self.broker_port(), user, self.password(user))
        rc = probe.connect()
        assert not rc.is_failure, rc
        return probe


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


def mosquittos_of(state: Path) -> list[int]:
    """The running processes whose command line names this state directory's mosquitto.conf."""
    conf = str(state / "broker" / "mosquitto.conf").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if conf in argv and not _gone(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def end_leftover_broker(state: Path) -> None:
    """End a mosquitto orphaned by a coordinator that was killed (or failed) and not restarted:
    only a process running this state directory's config, which only these tests started."""
    for pid in mosquittos_of(state):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    if not (SCALERUNNER.exists() and AGENT.exists()):
        pytest.skip("the console scripts are not installed (pip install -e .)")
    c = Cluster(tmp_path_factory.mktemp("coordinator"))
    try:
        c.start_coordinator()
        yield c
    finally:
        c.close()


def _state_events(events: list[dict[str, Any]], node: str) -> list[tuple[str, str]]:
    return [(e["old"], e["new"]) for e in events if e["node"] == node and e["axis"] == "state"]


# -- an agent brings its node up ------------------------------------------------------------------


def test_an_agent_that_starts_makes_its_node_online_then_idle_and_ls_json_has_the_documented_fields(
    cluster: Cluster,
) -> None:
    before = cluster.node(N1)
    assert (before["state"], before["health"]) == ("off", "unknown")
    cluster.start_agent(N1)
    cluster.start_agent(N2)
    cluster.wait_state(N1, "idle")
    cluster.wait_state(N2, "idle")

    for node in (N1, N2):
        transitions = _state_events(cluster.events(node), node)
        assert transitions[-2:] == [("off", "online"), ("online", "idle")], transitions
    online = next(e for e in cluster.events(N1) if e["new"] == "online")
    assert online["reason"].startswith("agent online (conn_seq ")
    idle = next(e for e in cluster.events(N1) if e["new"] == "idle")
    assert idle["reason"] == "first telemetry: no jobs running"

    listed = cluster.cli_json("nodes", "ls")
    assert [n["name"] for n in listed] == [N1, N2, N3]
    for n in listed:
        assert {"name", "state", "health", "arch", "labels"} <= n.keys()
    by_name = {n["name"]: n for n in listed}
    assert (by_name[N1]["state"], by_name[N1]["arch"], by_name[N1]["labels"]) == (
        "idle",
        "amd64",
        ["kvm", "pool=ci"],
    )
    assert (by_name[N3]["state"], by_name[N3]["health"]) == ("off", "unknown")
    assert by_name[N1]["telemetry"]["mem_total_mb"] > 0 and by_name[N1]["conn_seq"] > 0

    shown = cluster.cli_json("nodes", "show", N1)
    assert shown["name"] == N1 and shown["state"] == "idle" and shown["rack"] == {"row": 1, "position": 1}
    table = cluster.cli("nodes", "ls")
    assert table.returncode == 0 and N1 in table.stdout and "idle" in table.stdout


# -- drain, undrain, identify reach the agent over MQTT 5 ------------------------------------------


def test_drain_and_undrain_reach_the_agent_and_move_the_node_and_identify_answers_each_with_an_event(
    cluster: Cluster,
) -> None:
    cluster.ensure_agent(N1)
    state_topic = node_topic(CLUSTER, N1, Kind.STATE)
    sent = ("scalerunner_commands_total", (("kind", "sent"),))
    sent_before = cluster.metrics().get(sent, 0)
    with cluster.probe("coordinator") as watch:
        watch.subscribe(state_topic)
        retained = decode(watch.next_message().payload, NodeState)
        assert (retained.status, retained.draining) == ("online", False)
        first_event = cluster.events()[-1]["id"]

        done = cluster.cli("drain", N1, "--reason", "firmware update")
        assert done.returncode == 0, done.stderr
        assert f"{N1}: drain ok" in done.stderr
        assert cluster.node(N1)["state"] == "draining"
        # the agent got the command (MQTT 5 request/response) and republished its state before replying
        drained = decode(watch.next_message().payload, NodeState)
        assert (drained.status, drained.draining, drained.conn_seq) == ("online", True, retained.conn_seq)

        done = cluster.cli("undrain", N1, "--reason", "update done")
        assert done.returncode == 0, done.stderr
        assert cluster.node(N1)["state"] == "idle"
        assert decode(watch.next_message().payload, NodeState).draining is False

    done = cluster.cli("identify", N1)
    assert done.returncode == 0, done.stderr
    assert f"{N1}: identify ok" in done.stderr

    new = cluster.cli_json("events", "--node", N1, "--after", str(first_event))
    assert [(e["axis"], e["old"], e["new"], e["reason"]) for e in new] == [
        ("state", "idle", "draining", "drained: firmware update"),
        ("state", "draining", "idle", "undrained: update done"),
        ("command", "", "identify", "operator request"),
    ]
    assert cluster.metrics()[sent] == sent_before + 3

    # a node whose agent is not connected: refused by its state, named, exit 1, nothing recorded
    refused = cluster.cli("drain", N3)
    assert refused.returncode == 1
    assert f"node {N3} is off, cannot drain: its agent is not connected" in refused.stderr
    assert cluster.node(N3)["state"] == "off"


# -- health, and the CLI's exit codes ------------------------------------------------------------------


def test_health_changes_are_recorded_and_the_cli_exits_with_the_documented_codes(cluster: Cluster) -> None:
    first_event = cluster.events()[-1]["id"]
    done = cluster.cli("nodes", "health", N3, "maintenance", "--reason", "fan replaced")
    assert done.returncode == 0, done.stderr
    view = cluster.cli_json("nodes", "show", N3)
    assert (view["health"], view["health_reason"]) == ("maintenance", "set by operator: fan replaced")
    done = cluster.cli("nodes", "health", N3, "good", "--reason", "fan tested")
    assert done.returncode == 0, done.stderr
    assert cluster.node(N3)["health"] == "good"
    changes = [
        (e["axis"], e["old"], e["new"], e["reason"])
        for e in cluster.cli_json("events", "--node", N3, "--after", str(first_event))
    ]
    assert changes == [
        ("health", "unknown", "maintenance", "set by operator: fan replaced"),
        ("health", "maintenance", "good", "set by operator: fan tested"),
    ]

    # 2: usage -- a health value that does not exist, a reason left out, blank or too long
    bad = cluster.cli("nodes", "health", N3, "splendid", "--reason", "x")
    assert bad.returncode == 2 and "splendid" in bad.stderr
    assert cluster.cli("nodes", "health", N3, "bad").returncode == 2
    blank = cluster.cli("nodes", "health", N3, "bad", "--reason", "   ")
    assert blank.returncode == 2, blank.stderr
    assert "error: bad request: body.reason: " in blank.stderr and "not only blanks" in blank.stderr
    long = cluster.cli("drain", N3, "--reason", "x" * 501)
    assert long.returncode == 2 and "at most 500 characters" in long.stderr and "x" * 501 not in long.stderr
    assert cluster.node(N3)["health"] == "good"

    # 1: the thing failed -- an unknown node, named in the message
    for args in (("nodes", "show", "rack9-99"), ("nodes", "health", "rack9-99", "good", "--reason", "x")):
        unknown = cluster.cli(*args)
        assert unknown.returncode == 1, (args, unknown.stderr)
        assert "rack9-99" in unknown.stderr
    unknown = cluster.cli("drain", "rack9-99")
    assert unknown.returncode == 1 and "rack9-99" in unknown.stderr

    # 2: a wrong token (a configuration error: README "2 usage or config error")
    wrong = cluster.cli("nodes", "ls", "--token", "not-the-token")
    assert wrong.returncode == 2
    assert "refused the token" in wrong.stderr

    # 3: no coordinator known (no api.json)
    nowhere = {**cluster.env, "SCALERUNNER_HOME": str(cluster.root / "empty-home")}
    lost = cluster.cli("nodes", "ls", env=nowhere)
    assert lost.returncode == 3
    assert "no coordinator known" in lost.stderr and "api.json" in lost.stderr


# -- what a node publishes is checked before it counts --------------------------------------------------


def _rejected(cluster: Cluster) -> dict[str, float]:
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in cluster.metrics().items()
        if name == "scalerunner_messages_rejected_total"
    }


def test_malformed_wrong_schema_and_oversized_payloads_from_a_node_are_rejected_counted_and_change_nothing(
    cluster: Cluster,
) -> None:
    cluster.ensure_agent(N1)
    before_view = cluster.node(N1)
    before_events = cluster.events()
    before = _rejected(cluster)
    good_state = NodeState(node=N1, status="offline", conn_seq=before_view["conn_seq"] + 1_000_000)
    good_tele = Telemetry(node=N1, ts=time.time(), load1=99.0, cpu_pct=100.0, mem_used_mb=1, mem_total_mb=2)
    state_json = json.loads(encode(good_state))
    tele_json = json.loads(encode(good_tele))
    bad_payloads = {
        Kind.STATE: [
            b"\x93 not json {",
            json.dumps({**state_json, "schema": 2}).encode(),  # another schema
            json.dumps({**state_json, "status": "sleeping"}).encode(),  # a field of the wrong value
            json.dumps({k: v for k, v in state_json.items() if k != "conn_seq"}).encode(),  # missing field
            json.dumps({**state_json, "labels": ["x" * 60] * 1200}).encode(),  # > 64 KiB
            json.dumps({**state_json, "conn_seq": 2**64 - 1}).encode(),  # a number no store holds
        ],
        Kind.TELEMETRY: [
            b"",
            b"[1, 2, 3]",
            json.dumps({**tele_json, "schema": 2}).encode(),
            json.dumps({**tele_json, "cpu_pct": 250}).encode(),
            json.dumps({**tele_json, "pad": "x" * 70_000}).encode(),
            json.dumps({**tele_json, "mem_used_mb": 2**63}).encode(),
        ],
    }
    sent = 0
    with cluster.probe(N1) as node:  # the node's own user, on its own topics: the broker lets it through
        for kind, payloads in bad_payloads.items():
            for payload in payloads:
                rc = node.publish(node_topic(CLUSTER, N1, kind), payload)
                assert not rc.is_failure, (kind, rc)
                sent += 1
        # a payload that names another node is refused too, though well formed
        other = encode(Telemetry(node=N2, ts=time.time(), load1=1, cpu_pct=1, mem_used_mb=1, mem_total_mb=2))
        assert not node.publish(node_topic(CLUSTER, N1, Kind.TELEMETRY), other).is_failure
        # and the broker does not let a node write another node's topics at all
        assert node.publish(node_topic(CLUSTER, N2, Kind.STATE), encode(good_state)).is_failure

    def counted() -> dict[str, float] | None:
        now = _rejected(cluster)
        payload = now.get("payload", 0) - before.get("payload", 0)
        mismatch = now.get("node_mismatch", 0) - before.get("node_mismatch", 0)
        return now if (payload, mismatch) == (sent, 1) else None

    wait_until(counted, 5, f"{sent} payload rejections and 1 node_mismatch counted in /metrics")
    ingested = ("scalerunner_messages_ingested_total", (("kind", "telemetry"),))
    mark = cluster.metrics()[ingested]
    wait_until(lambda: cluster.metrics()[ingested] > mark, 5, "the link still ingests the agent's telemetry")
    after_view = cluster.node(N1)
    for key in ("state", "health", "health_reason", "conn_seq", "state_since"):
        assert after_view[key] == before_view[key], key
    assert after_view["telemetry"]["load1"] != 99.0  # the agent's real telemetry, not the probe's
    assert cluster.events() == before_events


# -- /metrics, /openapi.json, the token -------------------------------------------------------------------


def test_metrics_are_prometheus_text_openapi_lists_the_routes_and_the_api_wants_the_token(
    cluster: Cluster,
) -> None:
    cluster.ensure_agent(N1)
    samples = cluster.metrics()
    for node in (N1, N2, N3):
        states = {
            dict(lb)["state"]: v
            for (name, lb), v in samples.items()
            if name == "scalerunner_node_state" and dict(lb)["node"] == node
        }
        healths = {
            dict(lb)["health"]: v
            for (name, lb), v in samples.items()
            if name == "scalerunner_node_health" and dict(lb)["node"] == node
        }
        view = cluster.node(node)
        assert sum(states.values()) == 1 and states[view["state"]] == 1, (node, states)
        assert sum(healths.values()) == 1 and healths[view["health"]] == 1, (node, healths)
    assert samples[("scalerunner_node_state", (("node", N1), ("state", "idle")))] == 1
    assert samples[("scalerunner_messages_ingested_total", (("kind", "telemetry"),))] > 0
    assert ("scalerunner_node_load1", (("node", N1),)) in samples
    assert ("scalerunner_node_load1", (("node", N3),)) not in samples  # no telemetry, no sample

    spec = httpx.get(cluster.url + "/openapi.json", timeout=10).json()
    assert {
        "/api/v1/nodes",
        "/api/v1/nodes/{name}",
        "/api/v1/nodes/{name}/drain",
        "/api/v1/nodes/{name}/undrain",
        "/api/v1/nodes/{name}/identify",
        "/api/v1/nodes/{name}/health",
        "/api/v1/events",
    } <= set(spec["paths"])
    assert "NodeView" in spec["components"]["schemas"]

    requests = [
        ("GET", "/api/v1/nodes", None),
        ("GET", f"/api/v1/nodes/{N1}", None),
        ("POST", f"/api/v1/nodes/{N1}/drain", None),
        ("POST", f"/api/v1/nodes/{N1}/undrain", None),
        ("POST", f"/api/v1/nodes/{N1}/identify", None),
        ("PUT", f"/api/v1/nodes/{N1}/health", {"health": "bad", "reason": "x"}),
        ("GET", "/api/v1/events", None),
    ]
    for method, path, body in requests:
        for token in ("", "wrong"):
            resp = cluster.api(method, path, token=token, json=body)
            assert resp.status_code == 401, (method, path, token, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer"
            assert "token" in resp.json()["error"]
    assert cluster.node(N1)["state"] == "idle" and cluster.node(N1)["health"] != "bad"


# -- a crashed agent: the broker's Will takes its node offline ---------------------------------------


# -- the Will of a dead connection arriving after the reconnect ----------------------------------------


def test_a_will_from_an_older_connection_arriving_after_the_reconnect_leaves_the_node_online(
    cluster: Cluster,
) -> None:
    # MQTT orders messages per topic only, so the Will of a dead connection can reach the coordinator
    # after the same node reconnected and said online. Provoke exactly that, as the node's own user.
    held = cluster.node(N3)["conn_seq"]
    old, new = held + 10, held + 20
    tele = Telemetry(node=N3, ts=time.time(), load1=0.1, cpu_pct=1.0, mem_used_mb=1, mem_total_mb=2)
    with cluster.probe(N3) as node:
        state_topic = node_topic(CLUSTER, N3, Kind.STATE)
        assert not node.publish(
            state_topic, encode(NodeState(node=N3, status="online", conn_seq=old))
        ).is_failure
        # the node reconnects (a newer connection) before its old connection's Will is delivered
        assert not node.publish(
            state_topic, encode(NodeState(node=N3, status="online", conn_seq=new))
        ).is_failure
        assert not node.publish(node_topic(CLUSTER, N3, Kind.TELEMETRY), encode(tele)).is_failure
        cluster.wait_state(N3, "idle")
        # now the stale Will of the old connection arrives
        stale = NodeState(node=N3, status="offline", conn_seq=old)
        assert not node.publish(state_topic, encode(stale)).is_failure
        # ... and, behind it on the same topic, a marker: the stale Will was processed before it
        marker = Telemetry(node=N3, ts=time.time(), load1=7.5, cpu_pct=1.0, mem_used_mb=1, mem_total_mb=2)
        assert not node.publish(node_topic(CLUSTER, N3, Kind.TELEMETRY), encode(marker)).is_failure
        wait_until(lambda: cluster.node(N3)["telemetry"]["load1"] == 7.5, 5, "the marker telemetry")
        view = cluster.node(N3)
        assert view["state"] == "idle", "a stale Will took a live node offline"
        assert view["conn_seq"] == new
        # the Will of the current connection does take it offline
        assert not node.publish(
            state_topic, encode(NodeState(node=N3, status="offline", conn_seq=new))
        ).is_failure
        cluster.wait_state(N3, "offline")


def test_reboot_reaches_the_agent_and_one_without_a_reboot_command_refuses_with_exit_1(
    cluster: Cluster,
) -> None:
    cluster.ensure_agent(N1)
    cluster.wait_state(N1, "idle", "busy", "draining")
    proc = cluster.cli("reboot", N1, "--reason", "kernel update")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "reboot not configured" in proc.stderr and N1 in proc.stderr
    # a refused command is not recorded as done
    assert not any(e["axis"] == "command" and e["new"] == "reboot" for e in cluster.events(N1))


def test_identify_and_reboot_of_a_node_without_its_agent_are_refused_at_once_with_exit_1(
    cluster: Cluster,
) -> None:
    # N3's agent is gone (its Will came); by now recovery may be power-cycling it (it was not drained)
    assert cluster.node(N3)["state"] in ("off", "offline", "booting", "failed")
    for verb in ("identify", "reboot"):
        started = time.monotonic()
        proc = cluster.cli(verb, N3)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"node {N3} is" in proc.stderr and "its agent is not connected" in proc.stderr
        assert time.monotonic() - started < 4  # not the 5 s command timeout


def test_an_agent_killed_with_sigkill_takes_its_node_offline_through_its_will(cluster: Cluster) -> None:
    cluster.ensure_agent(N2)
    held = cluster.node(N2)["conn_seq"]
    cluster.kill_agent(N2)
    killed = time.monotonic()
    cluster.wait_state(N2, "offline", timeout=KEEPALIVE * 1.5 + 2)
    took = time.monotonic() - killed
    assert took < TELEMETRY_TIMEOUT, f"{took:.1f} s: telemetry silence, not the Will, took it offline"
    last = cluster.events(N2)[-1]
    assert (last["axis"], last["old"], last["new"]) == ("state", "idle", "offline")
    assert last["reason"] == f"agent offline (conn_seq {held}): connection closed or lost"


def test_a_held_drain_is_told_again_to_a_restarted_agent_and_an_undrain_while_it_is_away_is_done_at_once(
    cluster: Cluster,
) -> None:
    cluster.ensure_agent(N2)
    assert cluster.cli("drain", N2, "--reason", "rack work").returncode == 0
    cluster.kill_agent(N2, signal.SIGTERM)  # its draining flag lived in its memory
    cluster.wait_state(N2, "offline")
    cluster.start_agent(N2)
    cluster.wait_state(N2, "draining")  # the coordinator holds the drain across the restart ...
    wait_until(lambda: cluster.agent_state(N2).draining, 5, "the restarted agent is told to drain again")

    cluster.kill_agent(N2, signal.SIGTERM)
    cluster.wait_state(N2, "offline")
    started = time.monotonic()
    done = cluster.cli("undrain", N2)  # nobody to tell: cleared at once, not after a command timeout
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 3
    assert "told when it reconnects" in done.stderr
    assert cluster.node(N2)["state"] == "offline"
    cluster.start_agent(N2)
    cluster.wait_state(N2, "idle")
    assert not cluster.agent_state(N2).draining
    cluster.kill_agent(N2, signal.SIGTERM)
    cluster.wait_state(N2, "offline")


# -- a crashed coordinator loses nothing it acknowledged --------------------------------------------


def test_a_coordinator_killed_and_restarted_keeps_states_health_and_events_and_sees_the_agent_again(
    cluster: Cluster,
) -> None:
    cluster.ensure_agent(N1)
    done = cluster.cli("nodes", "health", N1, "good", "--reason", "burn-in passed")
    assert done.returncode == 0, done.stderr
    views = {n["name"]: n for n in cluster.cli_json("nodes", "ls")}
    events = cluster.events()
    agent = cluster.agents[N1]

    cluster.kill_coordinator()
    killed = time.monotonic()
    down = cluster.cli("nodes", "ls")  # api.json names a coordinator that is gone
    assert down.returncode == 3 and "could not be reached" in down.stderr
    # down for longer than telemetry_timeout: what it could not hear is not the nodes' silence
    time.sleep(max(0.0, killed + TELEMETRY_TIMEOUT + 0.5 - time.monotonic()))

    cluster.start_coordinator()
    after = cluster.events()
    assert after[: len(events)] == events, "every acknowledged event is still there, unchanged"
    kept = ("state", "health", "health_reason", "state_since")
    for name, view in views.items():
        again = cluster.node(name)
        assert [again[k] for k in kept] == [view[k] for k in kept], name
    assert cluster.node(N1)["health_reason"] == "set by operator: burn-in passed"

    # the agent never stopped; it reconnects to the restarted broker and is seen online again
    assert agent.poll() is None
    seen = wait_until(
        lambda: (v := cluster.node(N1))["state"] == "idle" and v["conn_seq"] > views[N1]["conn_seq"] and v,
        15,
        f"{N1} reconnected (newer conn_seq) and idle",
    )
    assert seen["health"] == "good"
    new = _state_events(cluster.events(N1)[len([e for e in events if e["node"] == N1]) :], N1)
    assert all(new_state != "offline" for _, new_state in new), f"a restart is not the node's fault: {new}"
    done = cluster.cli("drain", N1)
    assert done.returncode == 0, done.stderr
    assert cluster.cli("undrain", N1).returncode == 0


# -- a crashed broker is restarted and everyone reconnects -----------------------------------------------


def test_a_broker_killed_with_sigkill_is_restarted_and_the_coordinator_and_agent_reconnect(
    cluster: Cluster,
) -> None:
    cluster.ensure_agent(N1)
    views = {n["name"]: n for n in cluster.cli_json("nodes", "ls")}
    held = views[N1]["conn_seq"]
    pid = cluster.broker_pid()
    assert pid is not None
    port = cluster.broker_port()
    os.kill(pid, signal.SIGKILL)

    wait_until(lambda: (p := cluster.broker_pid()) is not None and p != pid, 10, "mosquitto restarted")
    assert cluster.broker_port() == port, "the restarted broker listens where the agents look"
    seen = wait_until(
        lambda: (v := cluster.node(N1))["conn_seq"] > held and v["state"] == "idle" and v,
        15,
        f"{N1} reconnected and idle",
    )
    assert seen["health"] == views[N1]["health"]
    # the coordinator's link is back too: a command goes out and its reply comes back
    done = cluster.cli("identify", N1)
    assert done.returncode == 0, done.stderr
    for name in (N2, N3):  # no agents: nothing to reconnect, nothing changed
        assert cluster.node(name)["state"] == views[name]["state"], name


# -- a clean stop ---------------------------------------------------------------------------------------


def test_sigterm_stops_the_coordinator_with_exit_0_and_ends_its_mosquitto(cluster: Cluster) -> None:
    assert cluster.coordinator is not None and mosquittos_of(cluster.state) != []
    cluster.coordinator.terminate()
    assert cluster.coordinator.wait(10) == 0, cluster.coordinator_log()
    assert mosquittos_of(cluster.state) == [] and cluster.broker_pid() is None


# -- `scalerunner up` that cannot start leaves nothing behind ---------------------------------------


@pytest.mark.parametrize(
    ("taken", "code", "message"),
    [
        ("api", 2, "{inv}: api.listen: cannot listen on 127.0.0.1:{port}: Address already in use"),
        ("broker", 3, "broker 127.0.0.1:{port}: the port is already in use by another process"),
    ],
)
def test_up_whose_port_is_taken_exits_with_the_documented_code_at_once_and_leaves_nothing_running(
    tmp_path: Path, taken: str, code: int, message: str
) -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker_port = port if taken == "broker" else 0
        (tmp_path / "inv.toml").write_text(
            f'[cluster]\nname = "{CLUSTER}"\n[broker]\nport = {broker_port}\n[api]\nlisten = "127.0.0.1:0"\n'
            f'[[nodes]]\nname = "{N1}"\nmac = "02:00:00:00:00:01"\narch = "amd64"\n'
        )
        argv = [str(SCALERUNNER), "up", "--config", str(tmp_path / "inv.toml")]
        if taken == "api":
            argv += ["--api-port", str(port)]
        env = {**os.environ, "SCALERUNNER_HOME": str(tmp_path / "home")}
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=15)
        finally:
            stop_process(proc)
            leftover = mosquittos_of(tmp_path / "state")
            end_leftover_broker(tmp_path / "state")
    assert proc.returncode == code, err
    assert f"error: {message.format(port=port, inv=tmp_path / 'inv.toml')}" in err
    assert out == "" and not (tmp_path / "home" / "api.json").exists()
    assert leftover == [], "its mosquitto was left running"
