"""The coordinator's MQTT connection: ingest node state and telemetry, send commands.

A thin shell: it validates what arrives (topic and payload, by the schemas in
``scalerunner.protocol.mqtt``), hands typed messages to the handler it was given,
and counts what it rejects, by reason (``topic``, ``unknown_node``, ``node_mismatch``,
``payload``, ``unexpected_reply``, and ``error`` when a handler failed: logged with its
traceback, and the link goes on, so one message can never stop ingest for every node).
Commands are MQTT 5 request/response: a future per correlation id, answered on the node's
reply topic or failed by timeout.

An offline state (a node's Will, or its goodbye) is acted on only after ``OFFLINE_HOLD`` seconds
while this connection stays up (``OfflineHold``): mosquitto, when it shuts down, first publishes
the Will of every client and then closes the coordinator's connection. Those Wills say that the
broker went away, not the nodes, so they are dropped when the link goes down within the hold; after
the reconnect each node has the lifecycle's grace to be heard again (docs/lifecycle.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..protocol.mqtt import (
    Command,
    CoordinatorState,
    JobStatus,
    Kind,
    LogChunk,
    NodeState,
    PayloadError,
    Reply,
    Telemetry,
    TopicError,
    coordinator_topic,
    decode,
    encode,
    node_filter,
    node_topic,
    parse_topic,
)
from .errors import CoordinatorError

log = logging.getLogger("scalerunner.coordinator.mqtt")

OFFLINE_HOLD = 0.5  # s; mosquitto closes the connections within milliseconds of the shutdown Wills


class OfflineHold:
    """Offline states waiting to be acted on: pure bookkeeping, the clock is passed in."""

    def __init__(self, hold: float = OFFLINE_HOLD) -> None:
        self.hold = hold
        self._held: dict[str, tuple[float, NodeState]] = {}  # node -> (due, state): the newest per node

    def offer(self, state: NodeState, now: float) -> None:
        held = self._held.get(state.node)
        if held is None or state.conn_seq >= held[1].conn_seq:
            self._held[state.node] = (now + self.hold, state)

    def next_due(self) -> float | None:
        return min((due for due, _ in self._held.values()), default=None)

    def due(self, now: float) -> list[NodeState]:
        """The states whose hold is over, oldest first; they are no longer held."""
        ready = sorted((due, name) for name, (due, _) in self._held.items() if due <= now)
        return [self._held.pop(name)[1] for _, name in ready]

    def drop_all(self) -> list[str]:
        """The link went down: the held states were the broker's goodbye. The nodes they named."""
        names = sorted(self._held)
        self._held.clear()
        return names


class CommandTimeout(CoordinatorError):
    """The node did not answer in time, or the command could not be delivered (``detail`` says why)."""

    def __init__(self, node: str, cmd: str, seconds: float, detail: str = "") -> None:
        if detail:
            super().__init__(f"command {cmd!r} to node {node} not delivered: {detail}")
        else:
            super().__init__(f"node {node} did not answer {cmd!r} within {seconds:g} s")
        self.node = node
        self.cmd = cmd


class CommandFailed(CoordinatorError):
    def __init__(self, node: str, cmd: str, error: str) -> None:
        super().__init__(f"node {node} refused {cmd!r}: {error}")
        self.node = node
        self.cmd = cmd
        self.error = error


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    username: str
    password: str
    cluster: str
    tls: ssl.SSLContext | None = None
    keepalive: int = 15


StateHandler = Callable[[NodeState], Awaitable[None]]
TelemetryHandler = Callable[[Telemetry], Awaitable[None]]
JobStatusHandler = Callable[[JobStatus], Awaitable[None]]
LogChunkHandler = Callable[[LogChunk], Awaitable[None]]
LinkHandler = Callable[[bool], Awaitable[None]]  # True: connected and subscribed; False: not connected


class CoordinatorLink:
    """One MQTT 5 connection with reconnect; ``start()``/``stop()``."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        known_nodes: Callable[[str], bool],
        on_state: StateHandler,
        on_telemetry: TelemetryHandler,
        on_job_status: JobStatusHandler | None = None,
        on_job_log: LogChunkHandler | None = None,
        on_link: LinkHandler | None = None,
        version: str = "",
    ) -> None:
        self.settings = settings
        self._known = known_nodes
        self._on_state = on_state
        self._on_telemetry = on_telemetry
        self._on_job_status = on_job_status
        self._on_job_log = on_job_log
        self._on_link = on_link
        self._offline = OfflineHold()
        self._offline_wake = asyncio.Event()
        self.offline_dropped = 0  # offline states dropped because the broker closed the link
        self._release_task: asyncio.Task[None] | None = None
        self._version = version
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._pending: dict[bytes, asyncio.Future[Reply]] = {}
        self._task: asyncio.Task[None] | None = None
        self.ingested: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.commands_sent = 0
        self.commands_timed_out = 0
        self.reconnects = 0

    @property
    def endpoint(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-link")
        self._release_task = asyncio.create_task(self._release_offline(), name="mqtt-offline-hold")

    async def stop(self) -> None:
        if self._client is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await self._publish_state("offline")
        for task in (self._task, self._release_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for fut in self._pending.values():
            fut.cancel()

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def _publish_state(self, status: str) -> None:
        assert self._client is not None
        payload = encode(CoordinatorState(status=status, version=self._version))  # type: ignore[arg-type]
        await self._client.publish(coordinator_topic(self.settings.cluster), payload, qos=1, retain=True)

    async def _run(self) -> None:
        s = self.settings
        delay = 0.5
        will = aiomqtt.Will(
            coordinator_topic(s.cluster),
            encode(CoordinatorState(status="offline", version=self._version)),
            qos=1,
            retain=True,
        )
        await self._link_changed(False)  # not connected yet: nothing is heard until the first connect
        while True:
            client = aiomqtt.Client(
                s.host,
                s.port,
                username=s.username,
                password=s.password,
                identifier=f"coordinator-{s.cluster}",
                protocol=aiomqtt.ProtocolVersion.V5,
                will=will,
                keepalive=s.keepalive,
                tls_context=s.tls,
            )
            try:
                async with client:
                    self._client = client
                    kinds = [Kind.STATE, Kind.TELEMETRY, Kind.REPLY]
                    kinds += [Kind.JOB_STATUS] if self._on_job_status else []
                    kinds += [Kind.JOB_LOG] if self._on_job_log else []
                    for kind in kinds:
                        await client.subscribe(node_filter(s.cluster, kind), qos=1)
                    await self._publish_state("online")
                    self._connected.set()
                    delay = 0.5
                    log.info("connected", extra={"endpoint": self.endpoint})
                    await self._link_changed(True)
                    async for message in client.messages:
                        await self._dispatch(message)
            except aiomqtt.MqttError as exc:
                log.warning("broker connection lost: %s", exc, extra={"endpoint": self.endpoint})
            finally:
                was_connected = self._connected.is_set()
                self._connected.clear()
                self._client = None
            dropped = self._offline.drop_all()
            if dropped:
                self.offline_dropped += len(dropped)
                log.warning(
                    "offline states dropped: the broker closed the connection within %g s of them",
                    self._offline.hold,
                    extra={"endpoint": self.endpoint, "nodes": ",".join(dropped)},
                )
            if was_connected:
                await self._link_changed(False)
            self.reconnects += 1
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 10.0)

    async def _release_offline(self) -> None:
        """Hand held offline states to the handler once their hold is over, while connected."""
        loop = asyncio.get_running_loop()
        while True:
            due = self._offline.next_due()
            if due is None:
                self._offline_wake.clear()
                await self._offline_wake.wait()
                continue
            if due > loop.time():
                self._offline_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._offline_wake.wait(), due - loop.time())
                continue
            if not self._connected.is_set():
                await asyncio.sleep(0.05)  # the link is going down: it drops them
                continue
            for state in self._offline.due(loop.time()):
                try:
                    await self._on_state(state)
                except Exception as exc:  # as in _dispatch: one state must not stop the others
                    self.rejected["error"] += 1
                    log.exception(
                        "handling the offline state of %s failed: %s",
                        state.node,
                        exc,
                        extra={"reason": "error", "node": state.node},
                    )

    async def _link_changed(self, up: bool) -> None:
        """Tell ``on_link``: the nodes' silence is not theirs while this connection is down."""
        if self._on_link is None:
            return
        try:
            await self._on_link(up)
        except Exception:  # the link goes on; the handler's bug is logged with its traceback
            log.exception("link handler failed", extra={"endpoint": self.endpoint, "up": up})

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.rejected[reason] += 1
        log.warning("rejected message on %s: %s", topic, detail, extra={"reason": reason, "topic": topic})

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        raw = message.payload
        data = raw if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
        try:
            ref = parse_topic(topic)
        except TopicError as exc:
            self._reject("topic", topic, str(exc))
            return
        if ref.node is None or not self._known(ref.node):
            self._reject("unknown_node", topic, f"node {ref.node!r} is not in the inventory")
            return
        try:
            if ref.kind is Kind.STATE:
                if not data:  # a cleared retained message
                    return
                state = decode(bytes(data), NodeState)
                if state.node != ref.node:
                    self._reject("node_mismatch", topic, f"payload names node {state.node!r}")
                    return
                self.ingested["state"] += 1
                if state.status == "offline":
                    self._offline.offer(state, asyncio.get_running_loop().time())
                    self._offline_wake.set()
                else:
                    await self._on_state(state)
            elif ref.kind is Kind.TELEMETRY:
                tele = decode(bytes(data), Telemetry)
                if tele.node != ref.node:
                    self._reject("node_mismatch", topic, f"payload names node {tele.node!r}")
                    return
                self.ingested["telemetry"] += 1
                await self._on_telemetry(tele)
            elif ref.kind in (Kind.JOB_STATUS, Kind.JOB_LOG):
                job_msg: JobStatus | LogChunk
                if ref.kind is Kind.JOB_STATUS:
                    job_msg = decode(bytes(data), JobStatus)
                else:
                    job_msg = decode(bytes(data), LogChunk)
                if job_msg.node != ref.node or job_msg.job != ref.job:
                    named = f"node {job_msg.node!r}, job {job_msg.job!r}"
                    self._reject("node_mismatch", topic, f"payload names {named}")
                    return
                self.ingested[ref.kind.value] += 1
                if isinstance(job_msg, JobStatus) and self._on_job_status is not None:
                    await self._on_job_status(job_msg)
                elif isinstance(job_msg, LogChunk) and self._on_job_log is not None:
                    await self._on_job_log(job_msg)
            elif ref.kind is Kind.REPLY:
                reply = decode(bytes(data), Reply)
                corr = _correlation(message)
                fut = self._pending.get(corr) if corr else None
                if fut is None:
                    self._reject("unexpected_reply", topic, "no command is waiting for this correlation data")
                    return
                self.ingested["reply"] += 1
                if not fut.done():
                    fut.set_result(reply)
        except PayloadError as exc:
            self._reject("payload", topic, str(exc))
        except Exception as exc:  # one message must not end the link for every node
            self.rejected["error"] += 1
            log.exception(
                "handling the message on %s failed: %s", topic, exc, extra={"reason": "error", "topic": topic}
            )

    async def command(self, node: str, cmd: Command, timeout: float = 5.0) -> Reply:
        """Send ``cmd`` to ``node`` and wait for its reply; CommandTimeout/CommandFailed."""
        if not self._connected.is_set() or self._client is None:
            raise CommandTimeout(
                node, cmd.cmd, 0, f"the coordinator is not connected to the broker {self.endpoint}"
            )
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = node_topic(self.settings.cluster, node, Kind.REPLY)
        props.CorrelationData = corr
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        try:
            await self._client.publish(
                node_topic(self.settings.cluster, node, Kind.CMD), encode(cmd), qos=1, properties=props
            )
            self.commands_sent += 1
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self.commands_timed_out += 1
            raise CommandTimeout(node, cmd.cmd, timeout) from None
        except aiomqtt.MqttError as exc:
            raise CommandTimeout(node, cmd.cmd, 0, f"broker connection lost: {exc}") from exc
        finally:
            self._pending.pop(corr, None)
        if not reply.ok:
            raise CommandFailed(node, cmd.cmd, reply.error)
        return reply


def _correlation(message: aiomqtt.Message) -> bytes | None:
    props = message.properties
    corr = getattr(props, "CorrelationData", None) if props is not None else None
    return bytes(corr) if corr else None
