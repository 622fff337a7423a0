"""Job dispatch: submit-to-start latency and throughput against one MQTT request/response.

``scalerunner up`` runs in a subprocess with its managed mosquitto and a throwaway inventory of N
nodes whose health check is a trivial job. One process (``benchmarks._dispatch_agents``) plays the
N agents: each answers every command at once and plays a ``run`` as a job that starts and ends at
once. When every node has passed its health check (good), 2N jobs are submitted over the REST API,
one after another, and the coordinator's own times are read back: submit-to-start latency is the
attempt's ``started_at`` (the node's started status arrived) minus the job's ``submitted_at``;
throughput is jobs over the time from the first submit to the last start.

The peer, measured side by side through the same broker: one MQTT 5 request/response to a node
(publish a command, wait for the agent's reply), the least any dispatch can cost. The figure is
the peer's p50 over dispatch's p50 (1.0 would be dispatch at the cost of one round trip).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks.common import Figure, RunningCoordinator, coordinator, free_port, raise_nofile, stop
from scalerunner.protocol.mqtt import Command, Kind, encode, node_topic

SIZES = (100, 500)
CLUSTER = "bench"
PREFIX = "dsp"
PEER_ROUND_TRIPS = 200


def _inventory(n: int, broker_port: int, api_port: int) -> str:
    nodes = "".join(
        f'\n[[nodes]]\nname = "{PREFIX}-{i:04d}"\nmac = "02:00:00:01:{i >> 8:02x}:{i & 0xFF:02x}"\n'
        'arch = "amd64"\n'
        for i in range(1, n + 1)
    )
    return (
        f'[cluster]\nname = "{CLUSTER}"\n'
        f'[broker]\nmode = "managed"\nhost = "127.0.0.1"\nport = {broker_port}\n'
        f'[api]\nlisten = "127.0.0.1:{api_port}"\n'
        "[timeouts]\nboot_timeout = 300\ntelemetry_timeout = 30\n"
        '[[health_checks]]\ncommand = ["true"]\n' + nodes
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _peer_round_trips(port: int, password: str, nodes: list[str]) -> list[float]:
    """Request/response over the broker as the coordinator does it, timed from here."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-dispatch-peer", protocol=mqtt.MQTTv5)
    client.username_pw_set("coordinator", password)
    got: dict[bytes, float] = {}

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        if corr:
            got[bytes(corr)] = time.perf_counter()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    try:
        client.subscribe(f"scalerunner/v1/{CLUSTER}/nodes/+/reply", qos=1)
        settle = time.perf_counter() + 0.5
        while time.perf_counter() < settle:
            client.loop(timeout=0.05)
        rtts = []
        for i in range(PEER_ROUND_TRIPS):
            node = nodes[i % len(nodes)]
            corr = uuid.uuid4().bytes
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = node_topic(CLUSTER, node, Kind.REPLY)
            props.CorrelationData = corr
            sent = time.perf_counter()
            client.publish(
                node_topic(CLUSTER, node, Kind.CMD), encode(Command(cmd="identify")), 1, properties=props
            )
            deadline = sent + 10
            while corr not in got and time.perf_counter() < deadline:
                client.loop(timeout=0.01)  # this thread drives the socket: no hand-over to a loop thread
            if corr in got:
                rtts.append(got[corr] - sent)
        return rtts
    finally:
        client.disconnect()


def _measure(n: int, root: Path) -> dict[str, Any]:
    broker_port, api_port = free_port(), free_port()
    with coordinator(root, _inventory(n, broker_port, api_port), broker_port) as coord:
        return _measure_on(n, coord, broker_port)


def _measure_on(n: int, coord: RunningCoordinator, broker_port: int) -> dict[str, Any]:
    state, api = coord.state, coord.api
    agents: subprocess.Popen[bytes] | None = None
    try:
        token = (state / "api-token").read_text().strip()
        users: dict[str, str] = json.loads((state / "broker-credentials.json").read_text())["users"]
        agents = subprocess.Popen(
            [
                sys.executable,
                *("-m", "benchmarks._dispatch_agents", "127.0.0.1", str(broker_port), CLUSTER),
                *(str(state / "broker-credentials.json"), PREFIX, str(n), "600"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert agents.stdout is not None
        if json.loads(agents.stdout.readline() or b"{}").get("event") != "ready":
            raise RuntimeError("the simulated agents did not start")
        http = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        deadline = time.monotonic() + 120
        while sum(v["health"] == "good" for v in http.get("/api/v1/nodes").json()) < n:
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not all pass their health checks within 120 s")
            time.sleep(0.5)
        nodes = [f"{PREFIX}-{i:04d}" for i in range(1, n + 1)]
        rtts = _peer_round_trips(broker_port, users["coordinator"], nodes)
        ids = []
        for i in range(2 * n):
            resp = http.post("/api/v1/jobs", json={"command": ["true"], "name": f"b{i}"})
            resp.raise_for_status()
            ids.append(resp.json()["id"])
        deadline = time.monotonic() + 300
        while True:
            done = http.get("/api/v1/jobs", params={"state": "succeeded", "limit": 10 * n}).json()
            mine = [j for j in done if j["id"] in set(ids)]
            if len(mine) == len(ids):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(mine)} of {len(ids)} jobs succeeded within 300 s")
            time.sleep(0.5)
        latencies = [j["attempts"][0]["started_at"] - j["submitted_at"] for j in mine]
        span = max(j["attempts"][0]["started_at"] for j in mine) - min(j["submitted_at"] for j in mine)
        return {
            "jobs": len(mine),
            "retried": sum(len(j["attempts"]) > 1 for j in mine),
            "p50": _pct(latencies, 0.5),
            "p99": _pct(latencies, 0.99),
            "throughput": len(mine) / span if span > 0 else 0.0,
            "peer_p50": statistics.median(rtts) if rtts else 0.0,
            "peer_p99": _pct(rtts, 0.99) if rtts else 0.0,
        }
    finally:
        if agents is not None and agents.stdin is not None:
            agents.stdin.close()
        stop(agents, grace=10)


def _figure(n: int, r: dict[str, Any]) -> Figure:
    return Figure(
        name=f"job dispatch, {n} simulated agents, {r['jobs']} trivial jobs: submit-to-start p50",
        measured=(
            f"p50 {r['p50'] * 1000:.1f} ms, p99 {r['p99'] * 1000:.1f} ms, {r['throughput']:.0f} jobs/s "
            f"({r['retried']} retried)"
        ),
        against=(
            f"one MQTT request/response p50 {r['peer_p50'] * 1000:.1f} ms (p99 {r['peer_p99'] * 1000:.1f} ms)"
        ),
        ratio=r["peer_p50"] / r["p50"] if r["p50"] else 0.0,
    )


def run() -> list[Figure]:
    raise_nofile()
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        for n in SIZES:
            figures.append(_figure(n, _measure(n, Path(tmp) / f"n{n}")))
    return figures


if __name__ == "__main__":
    for f in run():
        print(f)
