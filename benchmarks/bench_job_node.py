"""Jobs on the node: log goodput through the job executor, and the process runtime's start cost.

Log goodput: a job prints ~4 MB of text (base64 of random bytes); the real agent's executor spools it,
cuts it into numbered LogChunks and publishes them with QoS 1, one PUBACK at a time, to the coordinator's
managed mosquitto on loopback, where a coordinator-side client receives them. The peer, measured beside
it on the same broker, is a bare aiomqtt client publishing the same number of 8 KB QoS 1 messages one
PUBACK at a time: the ceiling of that way of sending. Ratio: peer time / executor time (1.0 = no cost
beyond the wire; the executor also runs the job, decodes UTF-8 and writes the spool).

Start cost: ``/bin/true`` run by the process runtime (unshare, pid, mount and network namespaces, /proc,
the setup shell) against ``/bin/true`` as a plain asyncio subprocess. Ratio: plain / namespaced.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt

from benchmarks.common import Figure
from scalerunner.coordinator.broker import ManagedBroker
from scalerunner.nodeagent.agent import Agent
from scalerunner.nodeagent.config import parse_config
from scalerunner.nodeagent.runtime.base import JobRun
from scalerunner.nodeagent.runtime.process import ProcessRuntime
from scalerunner.protocol.mqtt import (
    JobStatus,
    Kind,
    LogChunk,
    RunJob,
    decode,
    encode,
    job_command,
    node_topic,
)

CLUSTER, NODE = "bench", "node-a"
RAW_BYTES = 3 * 2**20  # base64: 4 MiB of text
STARTS = 20


async def _coordinator(broker: ManagedBroker) -> aiomqtt.Client:
    a = broker.access()
    return aiomqtt.Client(
        a.host,
        a.port,
        username=a.username,
        password=a.password,
        identifier=f"bench-{uuid.uuid4().hex[:6]}",
        protocol=aiomqtt.ProtocolVersion.V5,
    )


async def _executor_goodput(broker: ManagedBroker, tmp: Path) -> tuple[float, int, int]:
    """Seconds from the run command to the finished status, text chars received, chunks."""
    config = parse_config(
        f"""
cluster = "{CLUSTER}"
node = "{NODE}"
state_dir = "{tmp / "state"}"
[broker]
host = "{broker.access().host}"
port = {broker.port}
password = "{broker.node_password(NODE)}"
[capacity]
cpus = 1
memory_mb = 1024
[telemetry]
interval = 60
""",
        source="bench",
    )
    agent = Agent(config)
    await agent.start()
    await agent.wait_online(10)
    chars = 0
    chunks = 0
    try:
        async with await _coordinator(broker) as client:
            await client.subscribe(f"scalerunner/v1/{CLUSTER}/nodes/{NODE}/jobs/+/+", qos=1)
            run = RunJob(job="bench-log", attempt=1, script=f"head -c {RAW_BYTES} /dev/urandom | base64 -w 0")
            start = time.perf_counter()
            await client.publish(node_topic(CLUSTER, NODE, Kind.CMD), encode(job_command("run", run)), qos=1)
            async for m in client.messages:
                data = m.payload if isinstance(m.payload, bytes) else b""
                if str(m.topic).endswith("/log"):
                    chars += len(decode(data, LogChunk).data)
                    chunks += 1
                elif decode(data, JobStatus).phase == "finished":
                    return time.perf_counter() - start, chars, chunks
    finally:
        await agent.stop()
    raise RuntimeError("no finished status")


async def _bare_qos1(broker: ManagedBroker, n: int, size: int) -> float:
    """Seconds for ``n`` QoS 1 publishes of ``size`` bytes, one PUBACK at a time, received."""
    topic = f"scalerunner/v1/{CLUSTER}/nodes/{NODE}/jobs/bare/log"
    payload = b"x" * size
    async with await _coordinator(broker) as sub, await _coordinator(broker) as pub:
        await sub.subscribe(topic, qos=1)
        got = 0
        start = time.perf_counter()

        async def send() -> None:
            for _ in range(n):
                await pub.publish(topic, payload, qos=1)

        sender = asyncio.create_task(send())
        async for _m in sub.messages:
            got += 1
            if got == n:
                break
        await sender
        return time.perf_counter() - start


async def _starts(tmp: Path) -> tuple[float, float]:
    work = tmp / "work"
    work.mkdir()
    rt = ProcessRuntime()
    job = JobRun(job="bench-start", attempt=1, argv=("/bin/true",), workdir=work)
    ns, plain = [], []
    for _ in range(STARTS):
        t = time.perf_counter()
        await rt.run(job, lambda _s, _d: None)
        ns.append(time.perf_counter() - t)
        t = time.perf_counter()
        proc = await asyncio.create_subprocess_exec("/bin/true")
        await proc.wait()
        plain.append(time.perf_counter() - t)
    return statistics.median(ns), statistics.median(plain)


async def _all() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as d:
        tmp = Path(d)
        broker = ManagedBroker(CLUSTER, tmp / "broker", [NODE])
        await broker.start()
        try:
            took, chars, chunks = await _executor_goodput(broker, tmp)
            bare = await _bare_qos1(broker, chunks, 8192 + 120)
        finally:
            await broker.stop()
        ns, plain = await _starts(tmp)
    rate = chars / took
    return [
        Figure(
            name=f"job log goodput through the executor ({chars / 2**20:.1f} MiB, {chunks} chunks, QoS 1)",
            measured=f"{rate / 2**20:.2f} MiB/s ({took:.2f} s)",
            against=f"bare QoS 1 publisher, same chunks: {chars / bare / 2**20:.2f} MiB/s",
            ratio=bare / took,
        ),
        Figure(
            name="process runtime start+end of /bin/true (median of 20)",
            measured=f"{ns * 1000:.1f} ms",
            against=f"plain subprocess {plain * 1000:.1f} ms",
            ratio=plain / ns,
        ),
    ]


def run() -> list[Figure]:
    return asyncio.run(_all())
