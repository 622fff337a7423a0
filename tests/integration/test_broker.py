"""The managed broker against a real mosquitto: the ACL, passwords, Wills, restarts, reload, stop.

Clients speak MQTT 5 so that refusals are visible as reason codes. What mosquitto 2.0.11 does
(checked here, so a different version that behaves otherwise fails loudly):

- a QoS 1 PUBLISH the ACL denies is answered with PUBACK 0x87 "Not authorized" and dropped;
- a CONNECT with a wrong password or unknown user gets CONNACK 0x87 "Not authorized";
- a SUBSCRIBE to a filter outside the node's role gets SUBACK 0x87 "Not authorized" (the
  dynamic-security plugin checks subscriptions; a plain acl_file would grant them and only
  filter on delivery), and nothing is delivered to it, retained messages included;
- a Will on a topic the ACL denies is accepted at CONNECT and silently dropped when it fires;
- a node added or removed through the plugin's control API takes effect at once, without a
  restart: connected clients stay connected.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from scalerunner.coordinator.broker import ManagedBroker, TlsFiles
from scalerunner.coordinator.errors import BrokerError, UnknownNode
from tests.integration.broker_fixtures import (
    MqttProbe,
    RunningBroker,
    managed_broker_fixture,  # noqa: F401 -- a fixture, found by pytest under its name
    running_broker,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

NOT_AUTHORIZED = 0x87
GRANTED_QOS_1 = 0x01


def _no_more(probe: MqttProbe, wait: float = 0.2) -> None:
    with pytest.raises(queue.Empty):
        extra = probe.next_message(timeout=wait)
        pytest.fail(f"unexpected message {extra}")


def _mosquittos_with(conf: Path) -> list[int]:
    """PIDs of running processes whose command line names ``conf``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(conf).encode() in argv:
            found.append(int(entry.name))
    return found


def _wait_listening(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_node_cannot_publish_under_another_nodes_prefix(managed_broker: RunningBroker) -> None:
    b = managed_broker
    with b.probe(b.coordinator_user) as coord, b.probe("node-a") as node:
        assert coord.connect().value == 0 and node.connect().value == 0
        assert coord.subscribe(f"scalerunner/v1/{b.cluster}/#").value == GRANTED_QOS_1

        for topic in (
            b.topic("node-b", "state"),
            b.topic("node-b", "telemetry"),
            b.topic("node-b", "jobs/j1/log"),
            b.topic("node-a", "cmd"),  # its own commands are the coordinator's to write
            f"scalerunner/v1/{b.cluster}/coordinator/state",
        ):
            rc = node.publish(topic, b"forged")
            assert rc.value == NOT_AUTHORIZED, (topic, rc)

        # A message the node may send, after the forged ones: the coordinator sees it first and
        # nothing else, so none of the forged ones got through (the broker keeps a client's order).
        assert not node.publish(b.topic("node-a", "telemetry"), b"sentinel").is_failure
        got = coord.next_message()
        assert (got.topic, got.payload) == (b.topic("node-a", "telemetry"), b"sentinel")
        _no_more(coord)


def test_node_writes_every_topic_under_its_own_prefix(managed_broker: RunningBroker) -> None:
    b = managed_broker
    own = ["state", "telemetry", "reply", "jobs/j1/log", "jobs/j1/status"]
    with b.probe(b.coordinator_user) as coord, b.probe("node-a") as node:
        coord.connect()
        node.connect()
        coord.subscribe(f"scalerunner/v1/{b.cluster}/nodes/node-a/#")
        for tail in own:
            assert node.publish(b.topic("node-a", tail), tail.encode()).value == 0, tail
        assert [coord.next_message().payload.decode() for _ in own] == own


def test_node_never_receives_another_nodes_cmd(managed_broker: RunningBroker) -> None:
    b = managed_broker
    with b.probe(b.coordinator_user) as coord, b.probe("node-a") as node:
        coord.connect()
        node.connect()
        # the broker itself refuses the foreign filters (dynamic-security plugin: SUBACK 0x87)
        assert node.subscribe(b.topic("node-b", "cmd")).value == NOT_AUTHORIZED
        assert node.subscribe(f"scalerunner/v1/{b.cluster}/nodes/+/cmd").value == NOT_AUTHORIZED
        assert node.subscribe(f"scalerunner/v1/{b.cluster}/nodes/+/state").value == NOT_AUTHORIZED
        assert node.subscribe(b.topic("node-a", "cmd")).value == GRANTED_QOS_1

        for topic, payload in (
            (b.topic("node-b", "cmd"), b"for b"),
            (b.topic("node-b", "state"), b"b state"),
        ):
            assert not coord.publish(topic, payload).is_failure  # taken; no subscriber may have it
        assert coord.publish(b.topic("node-a", "cmd"), b"for a").value == 0

        got = node.next_message()
        assert (got.topic, got.payload) == (b.topic("node-a", "cmd"), b"for a")
        _no_more(node)


def test_node_reads_the_coordinators_state_but_may_not_write_it(managed_broker: RunningBroker) -> None:
    """Agents follow the coordinator's retained state (a restarted coordinator is told again how
    their recent job attempts ended), so every node may subscribe to it; nobody but the
    coordinator writes it."""
    b = managed_broker
    topic = f"scalerunner/v1/{b.cluster}/coordinator/state"
    with b.probe(b.coordinator_user) as coord, b.probe("node-a") as node:
        coord.connect()
        node.connect()
        assert not coord.publish(topic, b"online", retain=True).is_failure  # 0x10: no subscriber yet
        assert node.subscribe(topic).value == GRANTED_QOS_1
        got = node.next_message()
        assert (got.topic, got.payload) == (topic, b"online")
        assert node.publish(topic, b"forged").value == NOT_AUTHORIZED
        assert node.subscribe(f"scalerunner/v1/{b.cluster}/coordinator/#").value == NOT_AUTHORIZED
        _no_more(node)


def test_a_refused_subscription_gets_no_retained_message_either(managed_broker: RunningBroker) -> None:
    """The refused SUBSCRIBE leaks nothing, not even what is retained on those topics."""
    b = managed_broker
    with b.probe(b.coordinator_user) as coord, b.probe("node-b") as other, b.probe("node-a") as node:
        coord.connect()
        other.connect()
        assert not other.publish(b.topic("node-b", "state"), b"b online", retain=True).is_failure
        assert not coord.publish(b.topic("node-b", "cmd"), b"kept for b", retain=True).is_failure
        coord.subscribe(b.topic("node-b", "state"))
        assert coord.next_message().payload == b"b online"  # the retained message is there
        node.connect()
        assert node.subscribe(f"scalerunner/v1/{b.cluster}/nodes/+/state").value == NOT_AUTHORIZED
        assert node.subscribe(b.topic("node-b", "cmd")).value == NOT_AUTHORIZED
        _no_more(node, wait=0.5)


def test_wrong_password_or_unknown_user_is_refused_at_connect(managed_broker: RunningBroker) -> None:
    b = managed_broker
    wrong = b.probe("node-a", password=b.password("node-b"))
    unknown = MqttProbe(b.host, b.port, "node-z", "whatever")
    coordinator_wrong = b.probe(b.coordinator_user, password=b.password("node-a"))
    for probe in (wrong, unknown, coordinator_wrong):
        with probe:
            assert probe.connect().value == NOT_AUTHORIZED
    with b.probe("node-a") as right:
        assert right.connect().value == 0


def test_coordinator_reads_node_telemetry_and_writes_its_cmd(managed_broker: RunningBroker) -> None:
    b = managed_broker
    with b.probe(b.coordinator_user) as coord, b.probe("node-a") as node:
        coord.connect()
        node.connect()
        coord.subscribe(f"scalerunner/v1/{b.cluster}/nodes/+/telemetry")
        node.subscribe(b.topic("node-a", "cmd"))

        assert node.publish(b.topic("node-a", "telemetry"), b'{"load": 0.5}').value == 0
        got = coord.next_message()
        assert (got.topic, got.payload) == (b.topic("node-a", "telemetry"), b'{"load": 0.5}')

        assert coord.publish(b.topic("node-a", "cmd"), b'{"cmd": "identify"}').value == 0
        got = node.next_message()
        assert (got.topic, got.payload) == (b.topic("node-a", "cmd"), b'{"cmd": "identify"}')


def test_node_will_on_its_state_is_delivered_when_its_connection_drops(
    managed_broker: RunningBroker,
) -> None:
    b = managed_broker
    state = b.topic("node-a", "state")
    with b.probe(b.coordinator_user) as coord:
        coord.connect()
        coord.subscribe(f"scalerunner/v1/{b.cluster}/nodes/+/state")
        node = b.probe("node-a", will=(state, b"offline"))
        assert node.connect().value == 0
        assert node.publish(state, b"online", retain=True).value == 0
        assert coord.next_message().payload == b"online"

        node.drop()
        got = coord.next_message()
        assert (got.topic, got.payload) == (state, b"offline")

    # and it was retained: whoever subscribes later learns that node-a is offline
    with b.probe(b.coordinator_user) as later:
        later.connect()
        later.subscribe(state)
        got = later.next_message()
        assert (got.payload, got.retain) == (b"offline", True)


def test_node_will_on_another_nodes_state_is_dropped(managed_broker: RunningBroker) -> None:
    b = managed_broker
    with b.probe(b.coordinator_user) as coord:
        coord.connect()
        coord.subscribe(f"scalerunner/v1/{b.cluster}/nodes/+/state")
        spoof = MqttProbe(
            b.host,
            b.port,
            "node-a",
            b.password("node-a"),
            client_id="spoofer",
            will=(b.topic("node-b", "state"), b"offline"),
        )
        assert spoof.connect().value == 0  # accepted at CONNECT ...
        spoof.drop()
        b.wait_until(lambda: "Client spoofer closed its connection" in b.log_text(), what="drop seen")
        # ... and dropped when it fires: the next state the coordinator sees is the sentinel
        with b.probe("node-b") as node_b:
            node_b.connect()
            node_b.publish(b.topic("node-b", "state"), b"online")
        got = coord.next_message()
        assert (got.topic, got.payload) == (b.topic("node-b", "state"), b"online")
        _no_more(coord)


def test_killed_mosquitto_is_restarted_and_clients_connect_again(managed_broker: RunningBroker) -> None:
    b = managed_broker
    old_pid = b.broker.pid
    port = b.port
    assert old_pid is not None and b.broker.restarts == 0
    os.kill(old_pid, signal.SIGKILL)
    b.wait_until(lambda: b.broker.running and b.broker.pid != old_pid, what="mosquitto restarted")
    assert b.broker.restarts == 1
    assert b.port == port  # same address: clients reconnect where they were
    with b.probe("node-a") as node:
        assert node.connect().value == 0
        assert node.publish(b.topic("node-a", "state"), b"online").value != NOT_AUTHORIZED


def test_reload_with_a_new_node_lets_it_in_without_restarting(managed_broker: RunningBroker) -> None:
    b = managed_broker
    pid = b.broker.pid
    with pytest.raises(UnknownNode):
        b.password("node-c")
    password_a = b.password("node-a")
    with b.probe(b.coordinator_user) as coord:
        coord.connect()  # connected across both reloads
        coord.subscribe(b.topic("+", "state"))

        b.reload(["node-a", "node-b", "node-c"])
        assert b.broker.pid == pid and b.broker.restarts == 0
        assert b.password("node-a") == password_a  # the others keep theirs
        with b.probe("node-c") as node_c:
            assert node_c.connect().value == 0
            assert node_c.publish(b.topic("node-c", "state"), b"online").value == 0
            assert node_c.publish(b.topic("node-a", "state"), b"forged").value == NOT_AUTHORIZED
        assert coord.next_message().payload == b"online"

        old_b_password = b.password("node-b")
        b.reload(["node-a", "node-c"])  # node-b leaves: its password stops working
        assert b.broker.pid == pid
        with MqttProbe(b.host, b.port, "node-b", old_b_password) as gone:
            assert gone.connect().value == NOT_AUTHORIZED
        assert coord.publish(b.topic("node-c", "cmd"), b"still here").value != NOT_AUTHORIZED


def test_stop_leaves_no_mosquitto_behind(tmp_path: Path) -> None:
    with running_broker(tmp_path / "state") as b:
        pid = b.broker.pid
        conf = b.broker.files.conf
        assert pid is not None and _mosquittos_with(conf) == [pid]
        assert b.broker.files.pid.read_text().strip() == str(pid)
    assert not Path(f"/proc/{pid}").exists()  # reaped, not a zombie
    assert _mosquittos_with(conf) == []
    assert not b.broker.files.pid.exists()


def test_a_mosquitto_left_by_a_crashed_run_is_ended_at_start(tmp_path: Path) -> None:
    with running_broker(tmp_path / "state") as first:
        conf = first.broker.files.conf
        port = first.port
    # As if the coordinator had died: its mosquitto still running, its pid file still there.
    leftover = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_listening(port)
        conf.parent.joinpath("mosquitto.pid").write_text(f"{leftover.pid}\n")
        with running_broker(tmp_path / "state") as second:
            assert leftover.wait(5) == 0  # ended by SIGTERM (mosquitto then exits with 0)
            assert _mosquittos_with(conf) == [second.broker.pid]
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_start_failure_names_the_endpoint_and_mosquittos_log(tmp_path: Path) -> None:
    missing = TlsFiles(certfile=tmp_path / "no-cert.pem", keyfile=tmp_path / "no-key.pem")
    with pytest.raises(BrokerError) as err, running_broker(tmp_path / "state", tls=missing):
        pass
    exc = err.value
    assert exc.endpoint.startswith("127.0.0.1:") and not exc.endpoint.endswith(":0")
    assert "exited with code" in exc.detail and "Error" in exc.detail  # mosquitto's own words
    assert _mosquittos_with(tmp_path / "state" / "broker" / "mosquitto.conf") == []


def test_a_fixed_port_already_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = ManagedBroker("test", tmp_path / "state", ["node-a"], port=port)
        with pytest.raises(BrokerError, match="already in use") as err:
            asyncio.run(broker.start())
        asyncio.run(broker.stop())
    assert err.value.endpoint == f"127.0.0.1:{port}"
    assert _mosquittos_with(broker.files.conf) == []


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def test_tls_listener_with_openssl_made_certificates(tmp_path: Path) -> None:
    """The worked example in docs/broker.md: a CA, a server certificate for 127.0.0.1."""
    pki = tmp_path / "pki"
    pki.mkdir()
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=scalerunner test CA",
             cwd=pki)  # fmt: skip
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=127.0.0.1", cwd=pki)  # fmt: skip
    (pki / "san.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "broker.crt", "-days", "825", "-extfile", "san.ext", cwd=pki)  # fmt: skip
    tls = TlsFiles(certfile=pki / "broker.crt", keyfile=pki / "broker.key", cafile=pki / "ca.crt")
    with running_broker(tmp_path / "state", tls=tls) as b:
        access = b.broker.access()
        assert access.tls and access.cafile == pki / "ca.crt"
        ctx = access.tls_context()
        assert ctx is not None
        with b.probe(b.coordinator_user, tls_context=ctx) as coord:
            assert coord.connect().value == 0
            assert coord.publish(b.topic("node-a", "cmd"), b"over tls").value != NOT_AUTHORIZED
        # plain MQTT is not spoken there: no CONNACK comes back
        plain = MqttProbe(b.host, b.port, b.coordinator_user, access.password, timeout=1.0)
        with plain, pytest.raises((OSError, TimeoutError)):
            plain.connect()
