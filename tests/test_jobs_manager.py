"""The jobs part over a real SQLite store: durable submit, dispatch through a command sender,
statuses, gap-free logs with re-requests, artifacts with per-attempt tokens, restart."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from scalerunner.coordinator import lifecycle as lc
from scalerunner.coordinator.health import Health
from scalerunner.coordinator.inventory import loads_inventory
from scalerunner.coordinator.jobs.core import JobState, JobStateError, SchedulerConfig
from scalerunner.coordinator.jobs.manager import ArtifactError, JobManager
from scalerunner.coordinator.jobs.spec import spec_from_mapping
from scalerunner.coordinator.store import SqliteStore
from scalerunner.protocol.mqtt import (
    Command,
    JobStatus,
    LogChunk,
    Reply,
    ResendLog,
    RunJob,
    command_args,
)

INVENTORY = """
[cluster]
name = "lab"
[[health_checks]]
arch = "amd64"
script = "selftest"

[[nodes]]
name = "n1"
mac = "02:00:00:00:00:01"
arch = "amd64"
cpus = 2
memory_mb = 2048
[[nodes]]
name = "n2"
mac = "02:00:00:00:00:02"
arch = "arm64"
"""


def up(name: str, health: Health = Health.GOOD) -> lc.NodeRecord:
    return lc.NodeRecord(name=name, state=lc.NodeLifecycle.IDLE, health=health, conn_online=True)


class Node:
    """The commands the manager sent, answered like an agent would (or not at all)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Command]] = []
        self.answer: Callable[[str, Command], Reply] = lambda n, c: Reply(ok=True)

    async def send(self, node: str, cmd: Command) -> Reply:
        self.sent.append((node, cmd))
        return self.answer(node, cmd)

    def runs(self) -> list[tuple[str, RunJob]]:
        return [(n, command_args(c, RunJob)) for n, c in self.sent if c.cmd == "run"]


async def until(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := check()):
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
    return value


def run(
    body: Callable[[JobManager, Node, dict[str, lc.NodeRecord]], Awaitable[None]], tmp_path: Path
) -> None:
    async def main() -> None:
        inv = loads_inventory(INVENTORY, tmp_path / "scalerunner.toml")
        records = {"n1": up("n1"), "n2": up("n2", Health.UNKNOWN)}
        node = Node()
        async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
            jobs = JobManager(inv, store, lambda: records, tmp_path, config=SchedulerConfig(lease_s=5))
            jobs.send_command = node.send
            jobs.api_url = lambda: "http://127.0.0.1:1"
            await jobs.start()
            try:
                await asyncio.wait_for(body(jobs, node, records), 20)
            finally:
                await jobs.stop()

    asyncio.run(main())


def status(job: str, phase: str, chunks: int = 0, **kw: Any) -> JobStatus:
    return JobStatus(node="n1", job=job, attempt=1, phase=phase, log_chunks=chunks, **kw)  # type: ignore[arg-type]


def chunk(job: str, seq: int, text: str) -> LogChunk:
    return LogChunk(node="n1", job=job, attempt=1, seq=seq, stream="stdout", data=text)


def test_a_job_runs_on_a_good_node_and_its_log_is_read_whole_after_a_resend(tmp_path: Path) -> None:
    async def body(jobs: JobManager, node: Node, records: dict[str, lc.NodeRecord]) -> None:
        job = await jobs.submit(spec_from_mapping({"command": ["echo", "hi"], "env": {"A": "1"}, "cpus": 2}))
        ((where, run),) = await until(node.runs)
        assert where == "n1"  # n2's health is unknown, and its arch is no matter
        assert (run.job, run.attempt, run.argv, run.env, run.cpus) == (
            job.id,
            1,
            ["echo", "hi"],
            {"A": "1"},
            2.0,
        )
        assert run.upload_url == f"http://127.0.0.1:1/api/v1/jobs/{job.id}/attempts/1/artifacts"
        assert jobs.check_upload_token(job.id, 1, run.upload_token)
        assert not jobs.check_upload_token(job.id, 2, run.upload_token)

        await jobs.on_status(status(job.id, "started"))
        assert (await jobs.get(job.id)).state is JobState.RUNNING
        await jobs.on_log(chunk(job.id, 0, "a\n"))
        await jobs.on_log(chunk(job.id, 2, "c\n"))  # chunk 1 went missing
        chunks, done = await jobs.log(job.id, (0, -1))
        assert [c.data for c in chunks] == ["a\n"] and not done  # never skips the hole

        def answer(n: str, c: Command) -> Reply:
            if c.cmd == "resend_log":
                asked = command_args(c, ResendLog)
                assert asked.seqs == [1]
                asyncio.get_running_loop().create_task(jobs.on_log(chunk(job.id, 1, "b\n")))
            return Reply(ok=True)

        node.answer = answer
        await jobs.on_status(status(job.id, "finished", chunks=3, end="exited", exit_code=0))
        assert (await jobs.get(job.id)).state is JobState.SUCCEEDED

        async def whole() -> list[str]:
            chunks, done = await jobs.log(job.id, (0, -1))
            return [c.data for c in chunks] if done else []

        texts: list[str] = []
        while not texts:
            texts = await whole()
            await asyncio.sleep(0.05)
        assert texts == ["a\n", "b\n", "c\n"]

    run(body, tmp_path)


def test_a_refused_dispatch_requeues_and_a_node_that_drops_chunks_leaves_marked_gaps(tmp_path: Path) -> None:
    async def body(jobs: JobManager, node: Node, records: dict[str, lc.NodeRecord]) -> None:
        node.answer = lambda n, c: Reply(ok=False, error="no free slot")
        job = await jobs.submit(spec_from_mapping({"script": "true", "retries": 0}))
        await until(lambda: jobs.scheduler.jobs.get(job.id) is None)  # over: failed and forgotten
        got = await jobs.get(job.id)
        assert got.state is JobState.FAILED and "no free slot" in got.reason
        await until(lambda: any(c.cmd == "cancel" for _, c in node.sent))  # in case the run arrived after all

        node.answer = lambda n, c: Reply(
            ok=True, result={"missing": command_args(c, ResendLog).seqs} if c.cmd == "resend_log" else {}
        )
        job = await jobs.submit(spec_from_mapping({"script": "true"}))
        await until(lambda: len(node.runs()) == 2)
        await jobs.on_status(status(job.id, "started"))
        await jobs.on_status(status(job.id, "finished", chunks=2, end="exited", exit_code=0))

        async def streams() -> list[str]:
            chunks, done = await jobs.log(job.id, (0, -1))
            return [c.stream for c in chunks] if done else []

        got_streams: list[str] = []
        while not got_streams:
            got_streams = await streams()
            await asyncio.sleep(0.05)
        assert got_streams == ["gap", "gap"]

    run(body, tmp_path)


def test_cancel_a_running_job_and_a_lost_node_requeues(tmp_path: Path) -> None:
    async def body(jobs: JobManager, node: Node, records: dict[str, lc.NodeRecord]) -> None:
        a = await jobs.submit(spec_from_mapping({"script": "sleep 9", "cpus": 1}))
        b = await jobs.submit(spec_from_mapping({"script": "sleep 9", "cpus": 1}))
        await until(lambda: len(node.runs()) == 2)
        await jobs.cancel(a.id, "changed my mind")
        await until(lambda: any(c.cmd == "cancel" for _, c in node.sent))
        await jobs.on_status(status(a.id, "finished", end="cancelled", exit_code=143))
        assert (await jobs.get(a.id)).state is JobState.CANCELLED
        with pytest.raises(JobStateError):
            await jobs.cancel(a.id, "again")
        await jobs.requeue_node(lc.RequeueJobs("n1", (b.id,), "power-cycled"))
        await until(lambda: len(node.runs()) == 3)  # attempt 2 on the same node, now back
        assert node.runs()[-1][1].attempt == 2

    run(body, tmp_path)


def test_artifacts_are_stored_by_their_sha256_and_names_cannot_climb(tmp_path: Path) -> None:
    async def body(jobs: JobManager, node: Node, records: dict[str, lc.NodeRecord]) -> None:
        job = await jobs.submit(spec_from_mapping({"script": "true"}))
        await until(node.runs)

        async def data() -> AsyncIterator[bytes]:
            yield b"hello "
            yield b"world"

        rec = await jobs.put_artifact(job.id, 1, "out/report.txt", data())
        assert rec.sha256 == hashlib.sha256(b"hello world").hexdigest() and rec.size == 11
        assert jobs.artifact_path(rec.sha256).read_bytes() == b"hello world"
        for bad in ("../x", "/etc/passwd", "a/../../b", ""):
            with pytest.raises(ArtifactError):
                await jobs.put_artifact(job.id, 1, bad, data())
        with pytest.raises(ArtifactError, match="no attempt 7"):
            await jobs.put_artifact(job.id, 7, "x", data())

    run(body, tmp_path)


def test_a_restarted_manager_keeps_queued_and_running_jobs(tmp_path: Path) -> None:
    ids: list[str] = []

    async def first(jobs: JobManager, node: Node, records: dict[str, lc.NodeRecord]) -> None:
        records["n1"] = up("n1", Health.BAD)  # nothing can run: the job stays queued
        ids.append((await jobs.submit(spec_from_mapping({"script": "true", "name": "keep me"}))).id)
        assert node.runs() == []

    run(first, tmp_path)

    async def second(jobs: JobManager, node: Node, records: dict[str, lc.NodeRecord]) -> None:
        ((where, got),) = await until(node.runs)  # n1 is good again in this run
        assert (where, got.job, got.attempt) == ("n1", ids[0], 1)
        assert (await jobs.get(ids[0])).spec.name == "keep me"

    run(second, tmp_path)


def test_a_health_check_runs_on_its_unproven_node_and_a_failure_reports_the_logs_tail(tmp_path: Path) -> None:
    async def body(jobs: JobManager, node: Node, records: dict[str, lc.NodeRecord]) -> None:
        records["n1"] = up("n1", Health.UNKNOWN)
        reports: list[tuple[str, bool, str]] = []

        async def report(name: str, passed: bool, ref: str) -> None:
            reports.append((name, passed, ref))

        jobs.report_check = report
        ordinary = await jobs.submit(spec_from_mapping({"script": "true"}))
        await jobs.run_health_check(lc.RunHealthCheck("n1", "no health check has run yet"))
        await jobs.run_health_check(lc.RunHealthCheck("n1", "asked twice"))  # one check at a time
        ((where, run),) = await until(node.runs)
        assert (where, run.argv, run.script) == ("n1", None, "selftest")
        assert run.job != ordinary.id  # ordinary work waits for good health
        await jobs.on_status(status(run.job, "started"))
        await jobs.on_log(chunk(run.job, 0, "disk /dev/sda: I/O error\n"))
        await jobs.on_status(status(run.job, "finished", chunks=1, end="exited", exit_code=1))
        ((name, passed, ref),) = await until(lambda: reports)
        assert (name, passed) == ("n1", False)
        assert run.job in ref and "I/O error" in ref
        with pytest.raises(LookupError, match="no \\[\\[health_checks\\]\\] entry fits node n2"):
            await jobs.run_health_check(lc.RunHealthCheck("n2", "unknown"))

    run(body, tmp_path)
