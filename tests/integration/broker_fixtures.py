"""A real mosquitto for tests: a started ``ManagedBroker`` and a small MQTT 5 client to probe it.

Import the fixture explicitly in a test module::

    from tests.integration.broker_fixtures import MqttProbe, RunningBroker
    from tests.integration.broker_fixtures import managed_broker_fixture  # noqa: F401 (a fixture)

    def test_something(managed_broker: RunningBroker) -> None:
        with managed_broker.probe("node-a") as node:
            assert not node.publish(managed_broker.topic("node-a", "state"), b"{}").is_failure

The broker runs on its own event loop in a background thread, so the fixture serves plain
tests, ``asyncio.run()`` tests and anyio tests alike: connect to ``host:port`` with any client
(aiomqtt, paho, mosquitto_sub) using ``password(user)``. It listens on a free loopback port,
its cluster is ``test`` and its nodes ``node-a`` and ``node-b``; it is stopped (and its
mosquitto reaped) when the test ends, whatever happened.

``MqttProbe`` is paho-mqtt driven by a loop thread that never reconnects on its own, so a test
sees every reason code (CONNACK, PUBACK, SUBACK) and can drop a connection without a
DISCONNECT to fire its Will.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from scalerunner.coordinator.broker import ManagedBroker, TlsFiles

T = TypeVar("T")

CLUSTER = "test"
NODES = ("node-a", "node-b")


class RunningBroker:
    """A started ManagedBroker, driven from the test's thread."""

    def __init__(self, broker: ManagedBroker, loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self._loop = loop

    @property
    def host(self) -> str:
        return self.broker.access().host

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def cluster(self) -> str:
        return self.broker.config.cluster

    @property
    def coordinator_user(self) -> str:
        return self.broker.config.coordinator_user

    def password(self, user: str) -> str:
        """The broker password of the coordinator's user or of a node."""
        if user == self.coordinator_user:
            return self.broker.access().password
        return self.broker.node_password(user)

    def topic(self, node: str, tail: str) -> str:
        """``scalerunner/v1/<cluster>/nodes/<node>/<tail>``."""
        return f"{self.broker.config.prefix}/nodes/{node}/{tail}"

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = 15.0) -> T:
        """Run a coroutine on the broker's event loop and return its result."""

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def reload(self, nodes: Iterable[str]) -> None:
        nodes = tuple(nodes)
        self.call(lambda: self.broker.reload(nodes))

    def log_text(self) -> str:
        """What mosquitto has logged since this broker started."""
        return self.broker.files.log.read_text(errors="replace")

    def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout:g} s: {what or condition}")
            time.sleep(0.02)

    def probe(
        self,
        user: str,
        password: str | None = None,
        *,
        will: tuple[str, bytes] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> MqttProbe:
        """An unconnected MQTT 5 client for ``user`` (its real password unless one is given)."""
        return MqttProbe(
            self.host,
            self.port,
            user,
            self.password(user) if password is None else password,
            will=will,
            tls_context=tls_context,
        )


@contextmanager
def running_broker(
    state_dir: Path,
    cluster: str = CLUSTER,
    nodes: Iterable[str] = NODES,
    *,
    tls: TlsFiles | None = None,
    **options: Any,
) -> Iterator[RunningBroker]:
    """Start a ManagedBroker on a free loopback port in a background event loop; always stop it.

    ``options`` go to ManagedBroker (e.g. ``restart_initial``)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="broker-fixture-loop", daemon=True)
    thread.start()
    options.setdefault("restart_initial", 0.1)
    broker = ManagedBroker(cluster, state_dir, nodes, host="127.0.0.1", port=0, tls=tls, **options)
    running = RunningBroker(broker, loop)
    try:
        running.call(broker.start)
        yield running
    finally:
        try:
            running.call(broker.stop)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


@pytest.fixture(name="managed_broker")
def managed_broker_fixture(tmp_path: Path) -> Iterator[RunningBroker]:
    """A started mosquitto (cluster ``test``, nodes ``node-a`` and ``node-b``); stopped after."""
    with running_broker(tmp_path / "state") as running:
        yield running


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class MqttProbe:
    """A blocking MQTT 5 client for tests: every call returns the broker's reason code(s)."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        client_id: str | None = None,
        will: tuple[str, bytes] | None = None,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.messages: queue.Queue[Received] = queue.Queue()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{username}-probe-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self._client.username_pw_set(username, password)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        if tls_context is not None:
            self._client.tls_set_context(tls_context)
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self._acks: dict[int, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # paho callbacks, on the loop thread
    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self._connack = rc
            self._cond.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self._acks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        with self._cond:
            self._acks[mid] = rcs
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._client.loop(timeout=0.02) != mqtt.MQTT_ERR_SUCCESS:
                time.sleep(0.02)  # connection gone: stay down, the test decides what next

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, self.timeout):
                raise TimeoutError(f"no {what} from {self.host}:{self.port} within {self.timeout:g} s")

    def connect(self) -> ReasonCode:
        """Connect and return the CONNACK reason code (``Success`` or e.g. ``Not authorized``)."""
        self._client.connect(self.host, self.port, keepalive=30)
        self._thread = threading.Thread(target=self._run, name="mqtt-probe", daemon=True)
        self._thread.start()
        self._wait(lambda: self._connack is not None, "CONNACK")
        assert self._connack is not None
        return self._connack

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 (or 2) and return the PUBACK reason code."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        self._wait(lambda: info.mid in self._acks, f"PUBACK for {topic}")
        rc: ReasonCode = self._acks.pop(info.mid)
        return rc

    def subscribe(self, topic: str, qos: int = 1) -> ReasonCode:
        """Subscribe and return the SUBACK reason code for the filter."""
        _, mid = self._client.subscribe(topic, qos=qos)
        assert mid is not None
        self._wait(lambda: mid in self._acks, f"SUBACK for {topic}")
        rcs: list[ReasonCode] = self._acks.pop(mid)
        return rcs[0]

    def next_message(self, timeout: float | None = None) -> Received:
        return self.messages.get(timeout=self.timeout if timeout is None else timeout)

    def drop(self) -> None:
        """Lose the connection without a DISCONNECT (as a crashed node does): the Will fires."""
        self._halt()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Disconnect cleanly (no Will) and stop the loop thread."""
        if self._thread is not None and self._connack is not None and not self._connack.is_failure:
            self._client.disconnect()  # the loop thread sends it, then paho closes the socket
            deadline = time.monotonic() + 1.0
            while self._client.socket() is not None and time.monotonic() < deadline:
                time.sleep(0.005)
        self._halt()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            sock.close()

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None

    def __enter__(self) -> MqttProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
