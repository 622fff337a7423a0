"""The load generator of bench_ingest: N simulated agents in one process.

``python -m benchmarks._ingest_load HOST PORT CLUSTER CREDENTIALS PREFIX N WINDOW`` opens one
MQTT 5 connection per node ``PREFIX-0001`` … (each logging in as its own node user with the
password from the coordinator's credentials file), publishes each node's retained online state
as an agent does, then publishes valid ``Telemetry`` at 1 Hz per node, spread evenly over the
second (message j of the whole stream is due at t0 + j/N), for WINDOW seconds. No threads: the
N paho clients share one selector (``loop_read``/``loop_write``/``loop_misc``).

It reports on stdout, one JSON object a line: ``{"event": "start", "t0": …}`` (t0 on the
system-wide monotonic clock, which the parent shares) once every node is connected and online,
then ``{"event": "done", …}`` with what it sent, how late it fell behind its schedule and
its CPU time. A message still due when the window closes is not sent: it counts as missed.
"""

from __future__ import annotations

import json
import resource
import selectors
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from scalerunner.protocol.mqtt import Kind, NodeState, Telemetry, encode, node_topic

CONNECT_BATCH = 50  # connections in flight at once: keeps mosquitto's listen backlog short
CONNECT_TIMEOUT_S = 60.0


def _say(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Load:
    def __init__(
        self, host: str, port: int, cluster: str, passwords: dict[str, str], nodes: list[str]
    ) -> None:
        self.host = host
        self.port = port
        self.cluster = cluster
        self.passwords = passwords
        self.nodes = nodes
        self.sel = selectors.DefaultSelector()
        self.clients: list[mqtt.Client] = []
        self.connected: set[str] = set()
        self.failed: list[str] = []
        self.writing: set[mqtt.Client] = set()

    # -- the shared loop --------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, node: str, _flags: object, reason: object, _props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            self.failed.append(f"{node}: {reason}")
            return
        self.connected.add(node)
        state = NodeState(node=node, status="online", conn_seq=int(time.time() * 1000), ts=time.time())
        client.publish(node_topic(self.cluster, node, Kind.STATE), encode(state), qos=1, retain=True)
        self._want_write(client)

    def _want_write(self, client: mqtt.Client) -> None:
        sock = client.socket()
        if client.want_write() and client not in self.writing and sock is not None:
            self.writing.add(client)
            self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def poll(self, timeout: float) -> None:
        for key, events in self.sel.select(timeout):
            client: mqtt.Client = key.data
            if events & selectors.EVENT_READ:
                rc = client.loop_read()
                if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                    raise RuntimeError(f"connection of {client._client_id!r} lost: {rc}")
            if events & selectors.EVENT_WRITE:
                client.loop_write()
                if not client.want_write() and client in self.writing:
                    self.writing.discard(client)
                    sock = client.socket()
                    if sock is not None:
                        self.sel.modify(sock, selectors.EVENT_READ, client)

    def misc(self) -> None:
        for client in self.clients:
            client.loop_misc()

    # -- phases ---------------------------------------------------------------------------

    def connect_all(self) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        for node in self.nodes:
            while len(self.clients) - len(self.connected) >= CONNECT_BATCH:
                self._wait(deadline)
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=node, protocol=mqtt.MQTTv5, userdata=node
            )
            client.username_pw_set(node, self.passwords[node])
            client.on_connect = self._on_connect
            client.connect(self.host, self.port, keepalive=60)
            sock = client.socket()
            assert sock is not None
            self.sel.register(sock, selectors.EVENT_READ, client)
            self.clients.append(client)
            self._want_write(client)
        while len(self.connected) < len(self.nodes):
            self._wait(deadline)
        # let the online states (QoS 1) be acknowledged before the window opens
        while self.writing or any(c._out_messages for c in self.clients):
            self._wait(deadline)

    def _wait(self, deadline: float) -> None:
        if self.failed:
            raise RuntimeError(f"{len(self.failed)} connections refused, e.g. {self.failed[0]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(self.connected)} of {len(self.nodes)} connected")
        self.poll(0.05)

    def publish(self, window: float) -> dict[str, object]:
        n = len(self.nodes)
        topics = [node_topic(self.cluster, node, Kind.TELEMETRY) for node in self.nodes]
        total = int(window * n)
        t0 = time.monotonic() + 0.5
        _say(event="start", t0=t0, window=window, nodes=n)
        cpu0 = time.process_time()
        end = t0 + window
        j = 0
        max_late = 0.0
        last_misc = t0
        while j < total:
            now = time.monotonic()
            if now >= end:
                break
            while j < total and t0 + j / n <= now:
                max_late = max(max_late, now - (t0 + j / n))
                i = j % n
                tele = Telemetry(
                    node=self.nodes[i],
                    ts=time.time(),
                    load1=0.42,
                    cpu_pct=12.5,
                    mem_used_mb=512,
                    mem_total_mb=4096,
                    temp_c=47.5,
                    disk_free_mb=20_000,
                )
                client = self.clients[i]
                client.publish(topics[i], encode(tele), qos=0)
                self._want_write(client)
                j += 1
            if now - last_misc >= 5.0:
                self.misc()
                last_misc = now
            due = t0 + j / n if j < total else end
            self.poll(max(0.0, min(due, end) - time.monotonic()))
        # flush what is still queued in paho's buffers
        flush_until = time.monotonic() + 5.0
        while self.writing and time.monotonic() < flush_until:
            self.poll(0.05)
        return {
            "sent": j,
            "due": total,
            "max_late_s": round(max_late, 4),
            "cpu_s": round(time.process_time() - cpu0, 3),
        }

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()
            client.loop_write()
        for client in self.clients:
            sock = client.socket()
            if sock is not None:
                self.sel.unregister(sock)
        self.sel.close()


def main(argv: list[str]) -> int:
    host, port, cluster, credentials, prefix, n, window = argv
    raise_nofile()
    users: dict[str, str] = json.loads(Path(credentials).read_text())["users"]
    nodes = [f"{prefix}-{i:04d}" for i in range(1, int(n) + 1)]
    load = Load(host, int(port), cluster, users, nodes)
    try:
        load.connect_all()
        result = load.publish(float(window))
        _say(event="done", **result)
    finally:
        load.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
