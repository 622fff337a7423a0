"""The simulated agents of bench_dispatch: N nodes in one process that run every job at once.

``python -m benchmarks._dispatch_agents HOST PORT CLUSTER CREDENTIALS PREFIX N SECONDS`` connects N
node users (the connection handling of ``_ingest_load.Load``: one selector, no threads), says each
node is online, sends each node's telemetry every 2 s, and answers every command on the node's cmd
topic with an ``ok`` reply; a ``run`` is then played as a trivial job: ``started`` and ``finished``
(exit 0) statuses at once. It prints ``{"event": "ready"}`` once connected and stops after SECONDS
or when stdin closes.
"""

from __future__ import annotations

import json
import selectors
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks._ingest_load import Load, raise_nofile
from scalerunner.protocol.mqtt import (
    Command,
    JobStatus,
    Kind,
    PayloadError,
    Reply,
    RunJob,
    Telemetry,
    command_args,
    decode,
    encode,
    job_topic,
    node_topic,
)

TELEMETRY_EVERY_S = 2.0


class Agents(Load):
    def _on_connect(
        self, client: mqtt.Client, node: str, flags: object, reason: object, props: object
    ) -> None:
        super()._on_connect(client, node, flags, reason, props)
        client.on_message = self._on_message
        client.subscribe(node_topic(self.cluster, node, Kind.CMD), qos=1)
        self._want_write(client)

    def _on_message(self, client: mqtt.Client, node: str, msg: mqtt.MQTTMessage) -> None:
        try:
            cmd = decode(msg.payload, Command)
        except PayloadError:
            return
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = getattr(msg.properties, "CorrelationData", b"")
        reply_to = getattr(msg.properties, "ResponseTopic", None)
        if reply_to:
            client.publish(reply_to, encode(Reply(ok=True)), qos=1, properties=props)
        if cmd.cmd == "run":
            run = command_args(cmd, RunJob)
            topic = job_topic(self.cluster, node, run.job, Kind.JOB_STATUS)
            for status in (
                JobStatus(node=node, job=run.job, attempt=run.attempt, phase="started", ts=time.time()),
                JobStatus(
                    node=node,
                    job=run.job,
                    attempt=run.attempt,
                    phase="finished",
                    ts=time.time(),
                    end="exited",
                    exit_code=0,
                ),
            ):
                client.publish(topic, encode(status), qos=1)
        self._want_write(client)

    def serve(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        next_tele = 0.0
        stdin = selectors.DefaultSelector()
        stdin.register(sys.stdin, selectors.EVENT_READ)
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_tele:
                for node, client in zip(self.nodes, self.clients, strict=True):
                    tele = Telemetry(
                        node=node, ts=time.time(), load1=0.1, cpu_pct=1.0, mem_used_mb=100, mem_total_mb=4096
                    )
                    client.publish(node_topic(self.cluster, node, Kind.TELEMETRY), encode(tele), qos=0)
                    self._want_write(client)
                self.misc()
                next_tele = now + TELEMETRY_EVERY_S
            self.poll(0.05)
            if stdin.select(0) and not sys.stdin.readline():
                return  # the benchmark closed our stdin: done


def main(argv: list[str]) -> int:
    host, port, cluster, credentials, prefix, n, seconds = argv
    raise_nofile()
    users: dict[str, str] = json.loads(Path(credentials).read_text())["users"]
    nodes = [f"{prefix}-{i:04d}" for i in range(1, int(n) + 1)]
    agents = Agents(host, int(port), cluster, users, nodes)
    try:
        agents.connect_all()
        sys.stdout.write(json.dumps({"event": "ready"}) + "\n")
        sys.stdout.flush()
        agents.serve(float(seconds))
    finally:
        agents.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
