"""A node's health-check schedule survives a coordinator restart: the jobs part, over a real SQLite
store, recalls when each node was last checked and how many jobs it took since, instead of counting
both from the restart (which, with coordinators restarted more often than ``every_hours``, would
never check a node again)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from scalerunner.coordinator import lifecycle as lc
from scalerunner.coordinator.health import Health
from scalerunner.coordinator.inventory import loads_inventory
from scalerunner.coordinator.jobs.core import SchedulerConfig
from scalerunner.coordinator.jobs.manager import JobManager
from scalerunner.coordinator.jobs.spec import spec_from_mapping
from scalerunner.coordinator.store import SqliteStore
from scalerunner.protocol.mqtt import Command, JobStatus, Reply, RunJob, command_args

INVENTORY = """
[cluster]
name = "lab"
[[health_checks]]
arch = "amd64"
script = "selftest"
every_hours = 1
every_jobs = 3

[[nodes]]
name = "n1"
mac = "02:00:00:00:00:01"
arch = "amd64"
cpus = 8
memory_mb = 8192
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _finish_all(jobs: JobManager, count: int) -> None:
    """Wait until ``count`` jobs are dispatched, then end each attempt with exit 0, as an agent would."""
    for _ in range(500):
        live = list(jobs.scheduler.jobs.values())
        if len(live) >= count and all(j.active is not None for j in live):
            break
        await asyncio.sleep(0.01)
    for job in list(jobs.scheduler.jobs.values()):
        a = job.active
        assert a is not None, job
        base = {"node": a.node, "job": job.id, "attempt": a.number}
        await jobs.on_status(JobStatus(**base, phase="started"))  # type: ignore[arg-type]
        await jobs.on_status(JobStatus(**base, phase="finished", end="exited", exit_code=0))  # type: ignore[arg-type]


async def _check_submitted_at(jobs: JobManager, at: float) -> bool:
    for _ in range(100):
        if any(j.check and j.submitted_at == at for j in jobs.scheduler.jobs.values()):
            return True
        await asyncio.sleep(0.01)
    return False


def _checks(sent: list[tuple[str, Command]]) -> list[RunJob]:
    runs = [command_args(c, RunJob) for _, c in sent if c.cmd == "run"]
    return [r for r in runs if r.script == "selftest"]


async def _session(tmp_path: Path, clock: Clock, body: object) -> list[tuple[str, Command]]:
    inv = loads_inventory(INVENTORY, tmp_path / "scalerunner.toml")
    records = {
        "n1": lc.NodeRecord(name="n1", state=lc.NodeLifecycle.IDLE, health=Health.GOOD, conn_online=True)
    }
    sent: list[tuple[str, Command]] = []

    async def send(node: str, cmd: Command) -> Reply:
        sent.append((node, cmd))
        return Reply(ok=True)

    async with SqliteStore(tmp_path / "s.db", flush_interval=None) as store:
        jobs = JobManager(
            inv, store, lambda: records, tmp_path, clock=clock, config=SchedulerConfig(lease_s=5)
        )
        jobs.send_command = send
        jobs.api_url = lambda: "http://127.0.0.1:1"
        await jobs.start()
        try:
            assert callable(body)
            await asyncio.wait_for(body(jobs), 20)
        finally:
            await jobs.stop()
    return sent


def test_the_hours_and_jobs_since_a_nodes_last_check_are_counted_across_a_restart(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    seen: list[bool] = []

    async def first(jobs: JobManager) -> None:
        await jobs.run_health_check(lc.RunHealthCheck("n1", "no health check has run yet"))
        for _ in range(2):  # two ordinary jobs after the check: one short of every_jobs
            await jobs.submit(spec_from_mapping({"script": "true"}))
        await _finish_all(jobs, 3)

    sent = asyncio.run(_session(tmp_path, clock, first))
    assert len(_checks(sent)) == 1

    async def looks(jobs: JobManager) -> None:
        seen.append(await _check_submitted_at(jobs, clock.now))

    clock.now += 1800  # half an hour later, a restarted coordinator: no check is due yet
    asyncio.run(_session(tmp_path, clock, looks))
    clock.now += 1801  # past the hour since the check (not since the restart): one is due
    asyncio.run(_session(tmp_path, clock, looks))
    assert seen == [False, True]


def test_jobs_taken_before_a_restart_count_toward_every_jobs(tmp_path: Path) -> None:
    clock = Clock(2_000_000.0)
    seen: list[bool] = []

    async def first(jobs: JobManager) -> None:
        await jobs.run_health_check(lc.RunHealthCheck("n1", "no health check has run yet"))
        for _ in range(2):  # every_jobs is 3
            await jobs.submit(spec_from_mapping({"script": "true"}))
        await _finish_all(jobs, 3)

    async def after_restart(jobs: JobManager) -> None:
        seen.append(await _check_submitted_at(jobs, clock.now))  # 2 jobs: not yet
        await jobs.submit(spec_from_mapping({"script": "true"}))
        await _finish_all(jobs, 1)
        clock.now += 1
        seen.append(await _check_submitted_at(jobs, clock.now))  # the third: due

    asyncio.run(_session(tmp_path, clock, first))
    clock.now += 60
    asyncio.run(_session(tmp_path, clock, after_restart))
    assert seen == [False, True]
