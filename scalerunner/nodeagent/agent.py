"""The node agent's asyncio part: one MQTT 5 connection, retained state, telemetry, commands.

Functional core (no I/O, clock and randomness passed in): ``next_conn_seq``, ``Backoff``,
``decide`` (what a command does to the agent's ``Control`` state and what to answer) and
``node_state``. The shell, ``Agent``, moves data between them and the broker: it has
``start()``/``stop()`` and runs its work as named tasks in one TaskGroup.

Connection identity: every connection gets a ``conn_seq``, the wall clock in milliseconds at
connect time, forced above the previous one. The online state and the connection's Will
(offline, retained, same topic) carry the same seq, so a receiver can drop any state older than
the one it holds, across reconnects and across restarts of a RAM-booted node with no disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import platform
import random
import ssl  # loaded by asyncio anyway
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .. import __version__
from ..protocol.mqtt import (
    Capacity,
    Command,
    CoordinatorState,
    Kind,
    NodeState,
    PayloadError,
    Reply,
    coordinator_topic,
    decode,
    encode,
    node_topic,
)
from .config import AgentConfig
from .telemetry import ProcReader, Sampler, normalise_arch

if TYPE_CHECKING:
    from .jobs import JobExecutor
    from .led import LedDriver

log = logging.getLogger("scalerunner.nodeagent.agent")
mqtt_log = logging.getLogger("scalerunner.nodeagent.mqtt")
control_log = logging.getLogger("scalerunner.nodeagent.control")

# A wall clock before this is not set yet (a board without RTC before NTP): its conn_seq would be
# older than the one the node used before it rebooted, so the agent waits for the clock.
CLOCK_FLOOR_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
IDENTIFY_S = 30.0  # how long identify shows on the LED when the command gives no args.seconds
INCOMING_QUEUE = 64  # commands waiting to be handled; more are dropped by aiomqtt (and logged)
OUTGOING_QUEUE = 32  # paho's in-flight messages per connection
JOB_PUBLISH_TIMEOUT = 2.0  # s for the PUBACK of a job message; a dropped connection never sends it
JOB_COMMANDS = ("run", "cancel", "resend_log")


# -- functional core ------------------------------------------------------------------------


def next_conn_seq(prev: int | None, now_ms: int) -> int:
    """The seq of a new connection: the wall clock in ms, strictly above the previous seq."""
    return now_ms if prev is None or now_ms > prev else prev + 1


def clock_is_set(now_ms: int) -> bool:
    return now_ms >= CLOCK_FLOOR_MS


@dataclass
class Backoff:
    """Exponential reconnect delays with jitter and a cap.

    The n-th delay after a failure lies in [c/2, c] with c = min(cap, initial * 2**n) ("equal
    jitter": never a storm of instant retries, never two nodes in lock-step). A connection that
    stayed up ``stable_after`` seconds starts the count over; one that drops at once does not,
    so a broker that accepts and then kicks the agent out is not hammered.
    """

    initial: float = 0.5
    cap: float = 30.0
    stable_after: float = 10.0
    attempt: int = 0
    connected_at: float | None = None

    def connected(self, now: float) -> None:
        self.connected_at = now

    def next_delay(self, now: float, rand: float) -> float:
        """The delay before the next attempt; ``rand`` is uniform in [0, 1)."""
        if self.connected_at is not None and now - self.connected_at >= self.stable_after:
            self.attempt = 0
        self.connected_at = None
        ceiling = min(self.cap, self.initial * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return ceiling * (0.5 + 0.5 * min(max(rand, 0.0), 1.0))


class Action(StrEnum):
    NONE = "none"
    STATE = "state"  # republish the retained state (the draining flag changed)
    IDENTIFY = "identify"  # show identify on the LED until Control.identify_until
    REBOOT = "reboot"  # run the configured reboot command
    JOB = "job"  # a job command: the job executor answers it


@dataclass(frozen=True)
class Control:
    """What commands change. ``identify_until``: the LED shows identify until then (agent clock)."""

    draining: bool = False
    identify_until: float | None = None
    rebooting: bool = False


@dataclass(frozen=True)
class Decision:
    control: Control
    reply: Reply
    action: Action
    cmd: str  # the command's name, "" if the payload was not a command
    reason: str = ""  # why it was refused, for the log


def _refuse(control: Control, cmd: str, error: str) -> Decision:
    return Decision(control, Reply(ok=False, error=error), Action.NONE, cmd, error)


def decide(
    control: Control,
    data: bytes,
    *,
    now: float,
    reboot_configured: bool,
    led_configured: bool,
) -> Decision:
    """What the command payload ``data`` does. A payload that is not a valid Command changes nothing."""
    try:
        cmd = decode(data, Command)
    except PayloadError as exc:
        return _refuse(control, "", exc.detail)
    name = cmd.cmd
    if name in ("drain", "undrain"):
        draining = name == "drain"
        action = Action.STATE if draining != control.draining else Action.NONE
        new = dataclasses.replace(control, draining=draining)
        return Decision(new, Reply(ok=True, result={"draining": draining}), action, name)
    if name == "identify":
        seconds = cmd.args.get("seconds", IDENTIFY_S)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 3600:
            return _refuse(
                control, name, f"args.seconds: expected a number of seconds in (0, 3600], not {seconds!r}"
            )
        new = dataclasses.replace(control, identify_until=now + seconds) if led_configured else control
        result = {"led": led_configured, "seconds": seconds}
        return Decision(new, Reply(ok=True, result=result), Action.IDENTIFY, name)
    if name == "reboot":
        if not reboot_configured:
            return _refuse(control, name, "reboot not configured")
        if control.rebooting:
            return _refuse(control, name, "reboot already in progress")
        new = dataclasses.replace(control, rebooting=True)
        return Decision(new, Reply(ok=True, result={"rebooting": True}), Action.REBOOT, name)
    if name in JOB_COMMANDS:
        return Decision(control, Reply(ok=True), Action.JOB, name)
    return _refuse(control, name, f"{name} is not supported by this agent yet")


@dataclass(frozen=True)
class Identity:
    """What the retained state says about the node besides its status."""

    node: str
    agent_version: str
    arch: str
    labels: tuple[str, ...]
    capacity: Capacity | None


def node_state(ident: Identity, status: str, conn_seq: int, control: Control, ts: float) -> NodeState:
    return NodeState(
        node=ident.node,
        status="online" if status == "online" else "offline",
        conn_seq=conn_seq,
        agent_version=ident.agent_version,
        arch=ident.arch,
        labels=list(ident.labels),
        capacity=ident.capacity,
        ts=round(ts, 3),
        draining=control.draining,
    )


# -- the shell ----------------------------------------------------------------------------------


class Agent:
    """The node's MQTT presence: ``await start()``, later ``await stop()`` (publishes offline)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        reader: ProcReader | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        arch: str | None = None,
    ) -> None:
        self.config = config
        self._reader = reader if reader is not None else ProcReader(state_dir=config.state_dir)
        self._sampler = Sampler(config.node, self._reader)
        self._clock = clock
        self._rand = rand
        self._arch = arch if arch is not None else normalise_arch(platform.machine())
        self._ident: Identity | None = None
        c = config
        self.state_topic = node_topic(c.cluster, c.node, Kind.STATE)
        self.telemetry_topic = node_topic(c.cluster, c.node, Kind.TELEMETRY)
        self.cmd_topic = node_topic(c.cluster, c.node, Kind.CMD)
        self.coordinator_topic = coordinator_topic(c.cluster)
        self.client_id = f"scalerunner-agent-{c.cluster}-{c.node}"
        self.control = Control()
        self.conn_seq: int | None = None
        self._backoff = Backoff(c.reconnect_min, c.reconnect_max)
        self._client: aiomqtt.Client | None = None
        self._online = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self.led: LedDriver | None = None  # with led_serial: the LED indicator's driver
        self.jobs: JobExecutor | None = None  # runs the coordinator's jobs; made by the first job command
        self._capacity: Capacity | None = None
        self.connects = 0
        self.telemetry_sent = 0
        self.telemetry_dropped = 0
        self.commands_handled = 0
        self.commands_refused = 0

    def _extra(self, **fields: Any) -> dict[str, Any]:
        return {"node": self.config.node, **fields}

    @property
    def endpoint(self) -> str:
        return f"{self.config.broker_host}:{self.config.broker_port}"

    @property
    def online(self) -> bool:
        return self._online.is_set()

    async def start(self) -> None:
        c = self.config
        cpus = c.cpus if c.cpus is not None else (os.cpu_count() or 1)
        memory = c.memory_mb
        if memory is None:
            try:
                memory = self._reader.meminfo().total_mb
            except (OSError, ValueError) as exc:
                log.warning("cannot read memory size: %s", exc, extra=self._extra())
        capacity = Capacity(cpus=cpus, memory_mb=memory, slots=c.slots) if memory else None
        self._ident = Identity(c.node, __version__, self._arch, c.labels, capacity)
        if c.led_serial is not None and self.led is None:
            from .led import LedDriver  # loads the serial protocol: only with an LED configured

            self.led = LedDriver(c.led_serial, node=c.node, cpus=cpus, clock=self._clock, rand=self._rand)
            await self.led.start()
        self._capacity = capacity
        self._stopping = False
        self._runner = asyncio.create_task(self._run(), name=f"agent-{c.node}")

    async def _run(self) -> None:
        if self.config.password is None:
            # A network-booted node: trade the kernel command line's one-time token (or reuse
            # what this boot traded before); a refusal ends the agent with the reason.
            from .bootstrap import ensure_credentials

            self.config = await ensure_credentials(self.config)
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._connection_loop(), name="agent-mqtt")
            tg.create_task(self._telemetry_loop(), name="agent-telemetry")

    async def wait_online(self, timeout: float) -> None:
        await asyncio.wait_for(self._online.wait(), timeout)

    async def wait(self) -> None:
        """Until the agent's tasks end (only by stop() or by a bug: their exception is raised here)."""
        if self._runner is not None:
            await asyncio.shield(self._runner)

    async def stop(self) -> None:
        self._stopping = True
        client = self._client
        # Not gated on _online: that is set once the online state's PUBACK is back, and a signal
        # between the broker passing "online" on and that PUBACK would otherwise leave it standing
        # (the clean disconnect below sends no Will). Not connected: the publish fails, logged.
        if client is not None:
            try:
                await client.publish(
                    self.state_topic, encode(self._state("offline")), qos=1, retain=True, timeout=2.0
                )
                mqtt_log.info("offline state published", extra=self._extra(conn_seq=self.conn_seq))
            except aiomqtt.MqttError as exc:
                mqtt_log.warning("cannot publish offline state: %s", exc, extra=self._extra())
        if self.jobs is not None:  # kills what still runs; the coordinator's lease fails those attempts
            await self.jobs.stop()
            self.jobs = None
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._online.clear()
        if self.led is not None:  # the firmware shows "host lost" by itself once we are quiet
            await self.led.stop()
            self.led = None

    # -- connection -------------------------------------------------------------------------

    def _state(self, status: str) -> NodeState:
        assert self._ident is not None and self.conn_seq is not None
        return node_state(self._ident, status, self.conn_seq, self.control, self._clock())

    def _tls(self) -> ssl.SSLContext | None:
        if self.config.tls_ca is None:
            return None
        return ssl.create_default_context(cafile=str(self.config.tls_ca))

    async def _wait_for_clock(self) -> int:
        warned = False
        while True:  # polled: nothing announces that NTP has set the clock
            now_ms = int(self._clock() * 1000)
            if clock_is_set(now_ms):
                return now_ms
            if not warned:
                log.warning("wall clock not set yet, waiting for it before connecting", extra=self._extra())
                warned = True
            await asyncio.sleep(1.0)

    async def _connection_loop(self) -> None:
        c = self.config
        tls = self._tls()
        while True:
            self.conn_seq = next_conn_seq(self.conn_seq, await self._wait_for_clock())
            will = aiomqtt.Will(self.state_topic, encode(self._state("offline")), qos=1, retain=True)
            client = aiomqtt.Client(
                c.broker_host,
                c.broker_port,
                username=c.username,
                password=c.password,
                identifier=self.client_id,
                protocol=aiomqtt.ProtocolVersion.V5,
                will=will,
                keepalive=c.keepalive,
                clean_start=True,
                tls_context=tls,
                max_queued_incoming_messages=INCOMING_QUEUE,
                max_queued_outgoing_messages=OUTGOING_QUEUE,
            )
            try:
                async with client:
                    self._client = client
                    self._backoff.connected(time.monotonic())
                    await client.subscribe(self.cmd_topic, qos=1)
                    await client.subscribe(self.coordinator_topic, qos=1)
                    await client.publish(self.state_topic, encode(self._state("online")), qos=1, retain=True)
                    self.connects += 1
                    self._online.set()
                    mqtt_log.info("online", extra=self._extra(conn_seq=self.conn_seq, endpoint=self.endpoint))
                    async for message in client.messages:
                        await self._on_message(client, message)
            except aiomqtt.MqttError as exc:
                was_online = self._online.is_set()
                mqtt_log.warning(
                    "broker connection lost: %s" if was_online else "cannot connect to the broker: %s",
                    exc,
                    extra=self._extra(endpoint=self.endpoint, conn_seq=self.conn_seq),
                )
            finally:
                self._online.clear()
                self._client = None
            delay = self._backoff.next_delay(time.monotonic(), self._rand())
            mqtt_log.info(
                "reconnecting", extra=self._extra(delay_s=round(delay, 2), attempt=self._backoff.attempt)
            )
            await asyncio.sleep(delay)

    # -- commands ---------------------------------------------------------------------------

    async def _on_message(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        if str(message.topic) == self.coordinator_topic:
            self._on_coordinator_state(message.payload)
            return
        props = message.properties
        response_topic: str | None = getattr(props, "ResponseTopic", None) if props is not None else None
        corr: bytes | None = getattr(props, "CorrelationData", None) if props is not None else None
        raw = message.payload
        data = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
        d = decide(
            self.control,
            data,
            now=self._clock(),
            reboot_configured=bool(self.config.reboot_command),
            led_configured=self.config.led_serial is not None,
        )
        self.control = d.control
        reply = d.reply
        if d.action is Action.REBOOT:
            reply = await self._start_reboot()
        elif d.action is Action.JOB:
            reply = (await self._job_executor()).handle(decode(data, Command))
        elif d.action is Action.IDENTIFY:
            until = self.control.identify_until
            if self.led is not None and until is not None:
                self.led.identify(until)
            control_log.info("identify requested", extra=self._extra(led=self.config.led_serial, until=until))
        if reply.ok:
            self.commands_handled += 1
            control_log.info("command done", extra=self._extra(cmd=d.cmd, result=reply.result))
        else:
            self.commands_refused += 1
            control_log.warning(
                "command refused: %s", reply.error, extra=self._extra(cmd=d.cmd or None, reason=reply.error)
            )
        if d.action is Action.STATE and not self._stopping:
            # The state goes out before the reply: whoever gets the reply finds the new state retained.
            await client.publish(self.state_topic, encode(self._state("online")), qos=1, retain=True)
        if not response_topic:
            control_log.warning("command has no response topic, no reply sent", extra=self._extra(cmd=d.cmd))
            return
        props_out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if corr is not None:
            props_out.CorrelationData = corr
        try:
            await client.publish(response_topic, encode(reply), qos=1, properties=props_out)
        except ValueError as exc:  # a response topic with wildcards: paho refuses it
            control_log.warning("cannot reply to %r: %s", response_topic, exc, extra=self._extra(cmd=d.cmd))

    def _on_coordinator_state(self, raw: Any) -> None:
        """The coordinator's retained state: when it is online, the job executor (if it ran any
        job) says again how its kept attempts ended, in case the coordinator missed it."""
        data = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
        try:
            state = decode(data, CoordinatorState)
        except PayloadError as exc:
            control_log.warning(
                "bad coordinator state: %s", exc, extra=self._extra(topic=self.coordinator_topic)
            )
            return
        if state.status == "online" and self.jobs is not None:
            self.jobs.coordinator_online()

    async def _job_executor(self) -> JobExecutor:
        """The job executor, made and started on the first job command: the jobs code costs the
        agent about 1.5 MB of its 30 MB budget, which a node that never runs a job does not pay."""
        if self.jobs is None:
            from .images import ImageStore
            from .jobs import JobExecutor
            from .runtime import make_runtime

            c = self.config
            jobs = JobExecutor(
                cluster=c.cluster,
                node=c.node,
                runtime=make_runtime(c.job_runtime),
                work_dir=c.job_dir or c.state_dir / "jobs",
                capacity=self._capacity,
                link=_JobLink(self),
                draining=lambda: self.control.draining,
                images=ImageStore(c.image_dir or c.state_dir / "images", insecure=c.insecure_registries),
                clock=self._clock,
                keep_s=c.job_keep_logs,
                bench_backend=c.bench_backend,
                bench_boards=c.bench_boards,
            )
            await jobs.start()
            self.jobs = jobs
        return self.jobs

    async def _start_reboot(self) -> Reply:
        argv = self.config.reboot_command
        control_log.warning("rebooting", extra=self._extra(command=list(argv)))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            self.control = dataclasses.replace(self.control, rebooting=False)
            return Reply(ok=False, error=f"reboot command failed to start: {exc}")
        self._spawn(self._watch_reboot(proc), name="agent-reboot")
        return Reply(ok=True, result={"rebooting": True, "pid": proc.pid})

    async def _watch_reboot(self, proc: asyncio.subprocess.Process) -> None:
        _, err = await proc.communicate()
        if proc.returncode == 0:
            control_log.info("reboot command done", extra=self._extra(pid=proc.pid))
            return
        self.control = dataclasses.replace(self.control, rebooting=False)
        control_log.error(
            "reboot command failed",
            extra=self._extra(rc=proc.returncode, stderr=err.decode(errors="replace")[-300:].strip()),
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._tg is None:
            coro.close()
            return
        self._tg.create_task(coro, name=name)

    # -- telemetry --------------------------------------------------------------------------

    async def _telemetry_loop(self) -> None:
        """One sample per interval; while disconnected it is dropped, never queued."""
        interval = self.config.telemetry_interval
        loop = asyncio.get_running_loop()
        self._sampler.prime()
        due = loop.time()
        while True:
            due += interval
            now = loop.time()
            if due < now:  # the loop stalled (suspend, overload): skip the missed ticks
                due = now
            await asyncio.sleep(due - now)
            tele = self._sampler.sample(self._clock(), self.jobs.running() if self.jobs is not None else ())
            client = self._client
            if tele is None:
                continue
            if self.led is not None:  # the LED shows the node's load whether the broker is there or not
                self.led.show(tele)
            if client is None or not self._online.is_set():
                self.telemetry_dropped += 1
                continue
            try:
                await client.publish(self.telemetry_topic, encode(tele), qos=0, timeout=interval)
                self.telemetry_sent += 1
            except aiomqtt.MqttError:
                self.telemetry_dropped += 1


class _JobLink:
    """The agent's connection as the job executor sees it (jobs.Link): publish and wait for PUBACK."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    @property
    def online(self) -> bool:
        return self._agent.online

    async def wait_online(self) -> None:
        await self._agent._online.wait()

    async def publish(self, topic: str, payload: bytes, *, qos: int) -> None:
        from .jobs import LinkDown  # loaded already: only the executor calls this

        client = self._agent._client
        if client is None or not self._agent.online:
            raise LinkDown("not connected")
        try:
            await client.publish(topic, payload, qos=qos, timeout=JOB_PUBLISH_TIMEOUT)
        except aiomqtt.MqttError as exc:
            raise LinkDown(str(exc)) from exc
