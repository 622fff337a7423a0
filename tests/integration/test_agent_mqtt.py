"""The node agent against a real mosquitto: retained state, Will, telemetry, commands, reconnects.

The agent runs as a subprocess through its console script (so SIGKILL is a real crash); an
observer is a plain paho MQTT 5 client. mosquitto listens on a free loopback port with
anonymous access; the fixture always stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scalerunner.protocol.mqtt import Command, Kind, NodeState, Reply, Telemetry, decode, encode, node_topic

pytestmark = pytest.mark.slow

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
AGENT = Path(sys.executable).with_name("scalerunner-agent")
CLUSTER, NODE = "lab", "rack1-07"
KEEPALIVE = 1  # s: the broker gives up on a silent agent after 1.5 keepalives
STATE = node_topic(CLUSTER, NODE, Kind.STATE)
TELEMETRY = node_topic(CLUSTER, NODE, Kind.TELEMETRY)
CMD = node_topic(CLUSTER, NODE, Kind.CMD)
REPLY = node_topic(CLUSTER, NODE, Kind.REPLY)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-500:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip("mosquitto is not installed")
    b = Broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Observer:
    """A paho MQTT 5 client that records every message on its subscriptions."""

    def __init__(self, port: int, *filters: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        c.on_message = self._on_message
        c.on_subscribe = lambda *_: self._ready.set()
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        c.subscribe([(f, 1) for f in filters])
        assert self._ready.wait(5), "observer could not subscribe"
        self.client = c

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait_for(
        self, pred: Callable[[mqtt.MQTTMessage], bool], timeout: float = 5.0, *, since: int = 0
    ) -> mqtt.MQTTMessage:
        """The first message from index ``since`` on that matches ``pred``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[since:]:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching message within {timeout} s; got {self.topics()}")
                self._cond.wait(left)

    def topics(self) -> list[str]:
        return [f"{m.topic} {m.payload[:120]!r}" for m in self.messages]

    def wait_state(self, status: str, timeout: float = 5.0, *, newer_than: int = -1) -> NodeState:
        def match(m: mqtt.MQTTMessage) -> bool:
            if m.topic != STATE:
                return False
            s = decode(bytes(m.payload), NodeState)
            return s.status == status and s.conn_seq > newer_than

        return decode(bytes(self.wait_for(match, timeout).payload), NodeState)

    def command(self, payload: bytes, corr: bytes, timeout: float = 5.0) -> Reply:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = REPLY
        props.CorrelationData = corr
        self.client.publish(CMD, payload, qos=1, properties=props)
        msg = self.wait_for(lambda m: m.topic == REPLY and _corr(m) == corr, timeout)
        return decode(bytes(msg.payload), Reply)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _corr(m: mqtt.MQTTMessage) -> bytes | None:
    value = getattr(m.properties, "CorrelationData", None)
    return bytes(value) if value is not None else None


class AgentFactory(Protocol):
    def __call__(self, top: str = "") -> subprocess.Popen[bytes]:
        """Start an agent; ``top``: more top-level config lines."""
        ...


@pytest.fixture
def agent(broker: Broker, tmp_path: Path) -> Iterator[AgentFactory]:
    if not AGENT.exists():
        pytest.skip(f"{AGENT} is not installed (pip install -e .)")
    config = f"""
cluster = "{CLUSTER}"
node = "{NODE}"
labels = ["kvm", "pool=ci"]
state_dir = "."
[broker]
host = "127.0.0.1"
port = {broker.port}
password = "unused-by-an-anonymous-broker"
keepalive = {KEEPALIVE}
reconnect_min = 0.1
reconnect_max = 0.5
[telemetry]
interval = 0.2
"""
    (tmp_path / "cmdline").write_text("console=ttyS0 quiet\n")
    procs: list[subprocess.Popen[bytes]] = []

    def start(top: str = "") -> subprocess.Popen[bytes]:
        cfg = tmp_path / f"agent-{len(procs)}.toml"
        cfg.write_text(top + config)
        log = (tmp_path / f"agent-{len(procs)}.log").open("wb")
        p = subprocess.Popen(
            [str(AGENT), "--config", str(cfg), "--cmdline", str(tmp_path / "cmdline")], stdout=log, stderr=log
        )
        log.close()
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def observe(broker: Broker) -> Iterator[Callable[..., Observer]]:
    made: list[Observer] = []

    def make(*filters: str) -> Observer:
        o = Observer(broker.port, *(filters or (f"scalerunner/v1/{CLUSTER}/nodes/{NODE}/#",)))
        made.append(o)
        return o

    yield make
    for o in made:
        o.close()


def test_agent_publishes_retained_online_state_and_schema_valid_telemetry(
    agent: AgentFactory, observe: Callable[..., Observer]
) -> None:
    first = observe()
    agent()
    state = first.wait_state("online")
    late = observe()  # subscribes after the fact: only a retained message reaches it
    retained = late.wait_for(lambda m: m.topic == STATE)
    assert retained.retain and decode(bytes(retained.payload), NodeState) == state
    assert (state.node, state.agent_version, state.labels, state.draining) == (
        NODE,
        "0.1.0",
        ["kvm", "pool=ci"],
        False,
    )
    assert state.arch in ("amd64", "arm64", "riscv64") and state.capacity is not None
    assert state.capacity.cpus >= 1 and state.capacity.memory_mb > 0
    first.wait_for(lambda m: sum(x.topic == TELEMETRY for x in first.messages) >= 3, timeout=3)
    samples = [decode(bytes(m.payload), Telemetry) for m in first.messages if m.topic == TELEMETRY]
    assert all(t.node == NODE and t.mem_total_mb > 0 and t.jobs == [] for t in samples)
    assert all(0 <= t.cpu_pct <= 100 and t.disk_free_mb is not None for t in samples)
    assert not any(m.retain for m in first.messages if m.topic == TELEMETRY)


def test_sigkill_makes_the_broker_deliver_the_will_with_the_same_seq_and_a_restart_has_a_greater_seq(
    agent: AgentFactory, observe: Callable[..., Observer]
) -> None:
    obs = observe(STATE)
    proc = agent()
    online = obs.wait_state("online")
    proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    offline = obs.wait_state("offline", timeout=KEEPALIVE * 1.5 + 2)
    assert time.monotonic() - killed_at <= KEEPALIVE * 1.5 + 1.5
    assert offline.conn_seq == online.conn_seq
    agent()
    again = obs.wait_state("online", newer_than=online.conn_seq)
    assert again.conn_seq > online.conn_seq


def test_sigterm_publishes_offline_with_the_same_seq_and_exits_0(
    agent: AgentFactory, observe: Callable[..., Observer]
) -> None:
    obs = observe(STATE)
    proc = agent()
    online = obs.wait_state("online")
    proc.send_signal(signal.SIGTERM)
    offline = obs.wait_state("offline", timeout=2)
    assert offline.conn_seq == online.conn_seq
    assert proc.wait(5) == 0


def test_commands_get_replies_with_their_correlation_data_and_bad_ones_change_nothing(
    agent: AgentFactory, observe: Callable[..., Observer]
) -> None:
    obs = observe()
    agent()
    online = obs.wait_state("online")

    reply = obs.command(encode(Command(cmd="drain")), corr=b"\x00corr-1")
    assert reply.ok and reply.result == {"draining": True}
    drained_msg = obs.wait_for(lambda m: m.topic == STATE and b'"draining":true' in m.payload)
    drained = decode(bytes(drained_msg.payload), NodeState)
    assert (drained.status, drained.conn_seq) == ("online", online.conn_seq)

    states_before = sum(m.topic == STATE for m in obs.messages)
    for n, bad in enumerate([b"\x93garbage{", b'{"cmd":"undrain","schema":2}', b'{"cmd":"explode"}']):
        refused = obs.command(bad, corr=f"bad-{n}".encode())
        assert not refused.ok and refused.error, bad
    assert obs.command(encode(Command(cmd="reboot")), corr=b"r").error == "reboot not configured"
    assert obs.command(encode(Command(cmd="identify")), corr=b"i").ok
    assert sum(m.topic == STATE for m in obs.messages) == states_before  # nothing changed

    mark = len(obs.messages)
    assert obs.command(encode(Command(cmd="undrain")), corr=b"u").result == {"draining": False}
    obs.wait_for(lambda m: m.topic == STATE and b'"draining":false' in m.payload, since=mark)


def test_reboot_runs_the_configured_command_and_replies_ok(
    agent: AgentFactory, observe: Callable[..., Observer], tmp_path: Path
) -> None:
    marker = tmp_path / "rebooted"
    obs = observe()
    agent(f"reboot_command = {json.dumps(['touch', str(marker)])}\n")  # JSON strings are TOML strings
    obs.wait_state("online")
    reply = obs.command(encode(Command(cmd="reboot")), corr=b"boot")
    assert reply.ok and reply.result["rebooting"] is True and reply.result["pid"] > 0
    deadline = time.monotonic() + 5
    while not marker.exists():
        assert time.monotonic() < deadline, "the reboot command did not run"
        time.sleep(0.02)


def test_after_a_broker_restart_the_agent_reconnects_and_republishes_its_state(
    broker: Broker, agent: AgentFactory, observe: Callable[..., Observer]
) -> None:
    first = observe(STATE)
    agent()
    before = first.wait_state("online")
    broker.stop()  # retained messages go with it (persistence false)
    broker.start()
    obs = observe()
    after = obs.wait_state("online", timeout=5)
    assert after.conn_seq > before.conn_seq
    obs.wait_for(lambda m: m.topic == TELEMETRY, timeout=2)
    assert obs.command(encode(Command(cmd="drain")), corr=b"after-restart").ok  # resubscribed
