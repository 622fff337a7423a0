"""The agent's job executor on a real mosquitto, with a small coordinator-side peer in the test.

The peer speaks the job payloads of protocol/mqtt as the coordinator does: ``run``/``cancel``/
``resend_log`` on the node's cmd topic with a response topic, and it reads ``JobStatus`` and
numbered ``LogChunk``s. The jobs run in the real process runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import signal
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scalerunner.nodeagent.agent import Agent
from scalerunner.nodeagent.config import parse_config
from scalerunner.protocol.mqtt import (
    CancelJob,
    Command,
    JobStatus,
    Kind,
    LogChunk,
    Reply,
    ResendLog,
    RunJob,
    decode,
    encode,
    job_command,
    node_topic,
)
from tests.integration.broker_fixtures import (
    RunningBroker,
    managed_broker_fixture,  # noqa: F401 (a fixture)
)
from tests.integration.oci_fixtures import Registry, registry  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

NODE = "node-a"


class Peer:
    """The coordinator's side of one node's jobs: commands out, statuses and chunks in."""

    def __init__(self, running: RunningBroker) -> None:
        self.running = running
        self.cluster = running.cluster
        self.cmd = node_topic(self.cluster, NODE, Kind.CMD)
        self.reply = node_topic(self.cluster, NODE, Kind.REPLY)
        self.chunks: dict[tuple[str, int], dict[int, bytes]] = {}
        self.statuses: list[JobStatus] = []
        self.arrivals: dict[str, list[int]] = {}  # chunk numbers in the order they came
        self.telemetry: list[bytes] = []
        self._replies: dict[bytes, asyncio.Future[Reply]] = {}
        self._changed = asyncio.Event()
        self.client: aiomqtt.Client | None = None

    async def loop(self) -> None:
        """Connect, subscribe, record; reconnect after a broker restart."""
        while True:
            try:
                async with aiomqtt.Client(
                    self.running.host,
                    self.running.port,
                    username=self.running.coordinator_user,
                    password=self.running.password(self.running.coordinator_user),
                    identifier=f"peer-{uuid.uuid4().hex[:6]}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                ) as client:
                    base = f"scalerunner/v1/{self.cluster}/nodes/{NODE}"
                    await client.subscribe(f"{base}/jobs/+/+", qos=1)
                    await client.subscribe(self.reply, qos=1)
                    await client.subscribe(f"{base}/telemetry", qos=0)
                    self.client = client
                    self._changed.set()
                    async for m in client.messages:
                        self._on(m)
            except aiomqtt.MqttError:
                self.client = None
                await asyncio.sleep(0.1)

    def _on(self, m: aiomqtt.Message) -> None:
        data = m.payload if isinstance(m.payload, bytes) else b""
        topic = str(m.topic)
        if topic == self.reply:
            corr = getattr(m.properties, "CorrelationData", None)
            fut = self._replies.pop(corr, None) if corr else None
            if fut is not None and not fut.done():
                fut.set_result(decode(data, Reply))
        elif topic.endswith("/log"):
            c = decode(data, LogChunk)
            self.chunks.setdefault((c.job, c.attempt), {})[c.seq] = data
            self.arrivals.setdefault(c.job, []).append(c.seq)
        elif topic.endswith("/status"):
            self.statuses.append(decode(data, JobStatus))
        elif topic.endswith("/telemetry"):
            self.telemetry.append(data)
        self._changed.set()

    async def wait(self, cond: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while not (value := cond()):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"not within {timeout} s: {what}; statuses {self.statuses}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return value

    async def send(self, command: Command) -> Reply:
        await self.wait(lambda: self.client is not None, what="peer connected")
        assert self.client is not None
        corr = uuid.uuid4().bytes
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._replies[corr] = fut
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply
        props.CorrelationData = corr
        await self.client.publish(self.cmd, encode(command), qos=1, properties=props)
        return await asyncio.wait_for(fut, 10)

    async def run(self, run: RunJob) -> Reply:
        return await self.send(job_command("run", run))

    def finished(self, job: str) -> JobStatus | None:
        return next((s for s in self.statuses if s.job == job and s.phase == "finished"), None)

    def text(self, job: str, stream: str = "stdout", attempt: int = 1) -> str:
        got = self.chunks.get((job, attempt), {})
        parts = [decode(got[s], LogChunk) for s in sorted(got)]
        return "".join(c.data for c in parts if c.stream == stream)


@asynccontextmanager
async def agent_and_peer(
    running: RunningBroker, tmp_path: Path, extra: str = ""
) -> AsyncIterator[tuple[Agent, Peer]]:
    text = f"""
cluster = "{running.cluster}"
node = "{NODE}"
state_dir = "{tmp_path / "state"}"
[broker]
host = "{running.host}"
port = {running.port}
password = "{running.password(NODE)}"
keepalive = 2
reconnect_min = 0.05
reconnect_max = 0.3
[telemetry]
interval = 0.3
[capacity]
cpus = 2
memory_mb = 2048
slots = 2
[jobs]
dir = "{tmp_path / "jobs"}"
{extra}
"""
    agent = Agent(parse_config(text, source="agent.toml"))
    peer = Peer(running)
    peer_task = asyncio.create_task(peer.loop())
    await agent.start()
    try:
        await agent.wait_online(10)
        await peer.wait(lambda: peer.client is not None, what="peer connected")
        yield agent, peer
    finally:
        await agent.stop()
        peer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await peer_task


def job(name: str, script: str, **kw: Any) -> RunJob:
    return RunJob(job=name, attempt=1, script=script, lease_s=kw.pop("lease_s", 1.5), **kw)


def test_run_streams_numbered_chunks_in_order_and_reports_the_exit_code(
    managed_broker: RunningBroker, tmp_path: Path
) -> None:
    script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; sleep 0.2; done; exit 3"

    async def scenario() -> None:
        async with agent_and_peer(managed_broker, tmp_path) as (agent, peer):
            reply = await peer.run(job("j-order", script))
            assert reply.ok and reply.result["runtime"] == "process"
            await peer.wait(lambda: b'"j-order"' in b"".join(peer.telemetry), what="job in telemetry")
            done = await peer.wait(lambda: peer.finished("j-order"), what="finished")
            assert (done.end, done.exit_code) == ("exited", 3)
            seqs = sorted(peer.chunks[("j-order", 1)])
            assert seqs == list(range(done.log_chunks)) and done.log_chunks >= 10
            # in order (a chunk repeated after a publish timed out may come again later)
            assert list(dict.fromkeys(peer.arrivals["j-order"])) == seqs, peer.arrivals["j-order"]
            assert peer.text("j-order") == "".join(f"out{i}\n" for i in range(1, 6))
            assert peer.text("j-order", "stderr") == "".join(f"err{i}\n" for i in range(1, 6))
            phases = [s.phase for s in peer.statuses if s.job == "j-order"]
            assert phases[0] == "started" and phases[-1] == "finished" and "heartbeat" in phases
            jobs = agent.jobs
            assert jobs is not None  # off the running list once the broker acknowledged finished
            await peer.wait(lambda: jobs.running() == [], 5, "the attempt off the running list")

    asyncio.run(scenario())


def test_cancel_mid_run_kills_the_job_and_reports_cancelled(
    managed_broker: RunningBroker, tmp_path: Path
) -> None:
    marker = f"7{uuid.uuid4().int % 10**6:06d}"

    async def scenario() -> None:
        async with agent_and_peer(managed_broker, tmp_path) as (_, peer):
            assert (await peer.run(job("j-cancel", f"echo begun; sleep {marker}"))).ok
            await peer.wait(lambda: "begun" in peer.text("j-cancel"), what="job output")
            reply = await peer.send(
                job_command("cancel", CancelJob(job="j-cancel", attempt=1, reason="test"))
            )
            assert reply.ok and reply.result["running"] is True
            done = await peer.wait(lambda: peer.finished("j-cancel"), 5, "cancelled")
            assert (done.end, done.detail) == ("cancelled", "cancelled: test")
            again = await peer.send(job_command("cancel", CancelJob(job="j-cancel", attempt=1)))
            assert again.ok and again.result["running"] is False

    asyncio.run(scenario())
    assert not any(marker.encode() in _cmdline(p) for p in os.listdir("/proc") if p.isdigit())


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_timeout_is_enforced_on_the_node(managed_broker: RunningBroker, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with agent_and_peer(managed_broker, tmp_path) as (_, peer):
            assert (await peer.run(job("j-slow", "echo a; sleep 30", timeout_s=1.0))).ok
            done = await peer.wait(lambda: peer.finished("j-slow"), 8, "timeout")
            assert (done.end, done.exit_code) == ("timeout", 124)
            assert peer.text("j-slow") == "a\n"

    asyncio.run(scenario())


def test_a_gap_re_request_is_answered_from_the_spool(managed_broker: RunningBroker, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with agent_and_peer(managed_broker, tmp_path) as (_, peer):
            assert (await peer.run(job("j-gap", "echo one; sleep 0.1; echo two; sleep 0.1; echo three"))).ok
            done = await peer.wait(lambda: peer.finished("j-gap"), what="finished")
            assert done.log_chunks == 3
            first = dict(peer.chunks[("j-gap", 1)])
            peer.chunks[("j-gap", 1)] = {2: first[2]}  # as if 0 and 1 had been lost
            reply = await peer.send(
                job_command("resend_log", ResendLog(job="j-gap", attempt=1, seqs=[0, 1, 99]))
            )
            assert reply.ok and reply.result["missing"] == [99]
            await peer.wait(lambda: len(peer.chunks[("j-gap", 1)]) == 3, what="resent chunks")
            assert peer.chunks[("j-gap", 1)] == first  # the same bytes as the first time
            unknown = await peer.send(job_command("resend_log", ResendLog(job="j-none", attempt=1, seqs=[0])))
            assert unknown.result["missing"] == [0]

    asyncio.run(scenario())


def test_after_keep_logs_a_finished_attempt_is_forgotten(
    managed_broker: RunningBroker, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with agent_and_peer(managed_broker, tmp_path, "keep_logs = 0") as (_, peer):
            assert (await peer.run(job("j-keep", "echo once"))).ok
            await peer.wait(lambda: peer.finished("j-keep"), what="finished")
            req = job_command("resend_log", ResendLog(job="j-keep", attempt=1, seqs=[0]))
            deadline = asyncio.get_running_loop().time() + 5
            while (await peer.send(req)).result["missing"] != [0]:  # pruned within a second or so
                assert asyncio.get_running_loop().time() < deadline, "the spool was kept"
                await asyncio.sleep(0.2)
            assert not (tmp_path / "jobs" / "j-keep-1").exists()

    asyncio.run(scenario())


def test_a_broker_restart_mid_job_loses_no_chunk(managed_broker: RunningBroker, tmp_path: Path) -> None:
    script = "i=0; while [ $i -lt 40 ]; do echo line$i; i=$((i+1)); sleep 0.05; done"

    async def scenario() -> None:
        async with agent_and_peer(managed_broker, tmp_path) as (agent, peer):
            assert (await peer.run(job("j-restart", script, lease_s=30))).ok
            await peer.wait(lambda: "line5" in peer.text("j-restart"), what="output before the restart")
            pid = managed_broker.broker.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # our fixture's mosquitto; its supervisor starts it again
            await peer.wait(lambda: managed_broker.broker.restarts >= 1, what="broker restarted")
            done = await peer.wait(lambda: peer.finished("j-restart"), 20, "finished after the restart")
            assert agent.connects >= 2
            got = peer.chunks[("j-restart", 1)]
            missing = [s for s in range(done.log_chunks) if s not in got]
            if missing:  # chunks the broker acknowledged but lost with its restart: ask again
                reply = await peer.send(
                    job_command("resend_log", ResendLog(job="j-restart", attempt=1, seqs=missing))
                )
                assert reply.result["missing"] == []
                await peer.wait(lambda: all(s in got for s in missing), what="re-requested chunks")
            assert sorted(got) == list(range(done.log_chunks))
            assert peer.text("j-restart") == "".join(f"line{i}\n" for i in range(40))
            assert (done.end, done.exit_code) == ("exited", 0)

    asyncio.run(scenario())


def test_runs_are_refused_when_draining_or_full(managed_broker: RunningBroker, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with agent_and_peer(managed_broker, tmp_path) as (_, peer):
            assert (await peer.run(job("j-a", "sleep 5"))).ok
            assert (await peer.run(job("j-a", "sleep 5"))).result.get("duplicate") is True
            assert (await peer.run(job("j-b", "sleep 5", cpus=1))).ok
            full = await peer.run(job("j-c", "true"))
            assert (
                not full.ok
                and full.error == "node node-a has all 2 job slots busy, cannot accept job j-c attempt 1"
            )
            for name in ("j-a", "j-b"):
                await peer.send(job_command("cancel", CancelJob(job=name, attempt=1)))
            await peer.wait(lambda: peer.finished("j-a") and peer.finished("j-b"), what="both cancelled")
            assert (await peer.send(Command(cmd="drain"))).ok
            drained = await peer.run(job("j-d", "true"))
            assert (
                not drained.ok and drained.error == "node node-a is draining, cannot accept job j-d attempt 1"
            )
            bad = await peer.send(Command(cmd="run", args={"job": "j-e", "attempt": 1}))
            assert not bad.ok and "exactly one of argv and script" in bad.error
            assert (await peer.send(Command(cmd="undrain"))).ok
            nowhere = f"127.0.0.1:{closed_port()}/none:1"  # nothing listens there
            assert (await peer.run(job("j-img", "true", image=nowhere))).ok
            fault = await peer.wait(lambda: peer.finished("j-img"), 60, what="fault")
            assert (fault.end, fault.exit_code) == ("fault", None)
            assert fault.detail.startswith(f"job j-img: image {nowhere}: ")

    asyncio.run(scenario())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_job_with_an_image_runs_in_the_pulled_root_filesystem(
    managed_broker: RunningBroker,
    tmp_path: Path,
    registry: Registry,  # noqa: F811
) -> None:
    ref = registry.push_busybox(tmp_path / "build", "test/process:1", marker="pulled-for-the-process-runtime")
    extra = f'insecure_registries = ["{registry.host}"]'

    async def scenario() -> None:
        async with agent_and_peer(managed_broker, tmp_path, extra) as (_, peer):
            run = job("j-image", "cat /etc/marker; echo $IMAGE_VAR $MINE; pwd", image=ref, env={"MINE": "x"})
            assert (await peer.run(run)).ok
            done = await peer.wait(lambda: peer.finished("j-image"), 60, what="finished")
            assert (done.end, done.exit_code) == ("exited", 0), done.detail
            assert peer.text("j-image") == "pulled-for-the-process-runtime\nfrom-image x\n/work\n"

    asyncio.run(scenario())


class Uploads(http.server.BaseHTTPRequestHandler):
    got: list[tuple[str, str, bytes]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append((self.path, self.headers.get("Authorization", ""), body))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def upload_server() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    Uploads.got = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Uploads)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/artifacts/j-art/1", Uploads.got
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def test_artifacts_are_uploaded_with_the_token_and_confined_to_the_workdir(
    managed_broker: RunningBroker, tmp_path: Path, upload_server: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    url, got = upload_server
    script = "mkdir -p out && echo result > out/a.txt && ln -s /etc/hostname out/host.txt"

    async def scenario() -> None:
        async with agent_and_peer(managed_broker, tmp_path) as (_, peer):
            run = job("j-art", script, artifacts=["out/*", "../x"], upload_url=url, upload_token="tok-1")
            assert (await peer.run(run)).ok
            done = await peer.wait(lambda: peer.finished("j-art"), what="finished")
            assert (done.end, done.exit_code, done.artifacts) == ("exited", 0, ["out/a.txt"])
            assert "out/host.txt is or lies under a symbolic link" in done.detail
            assert "'../x' must not use '..'" in done.detail

    asyncio.run(scenario())
    assert got == [("/artifacts/j-art/1/out/a.txt", "Bearer tok-1", b"result\n")]
    assert not (tmp_path / "jobs" / "j-art-1" / "work").exists()  # the workdir is gone after the end
