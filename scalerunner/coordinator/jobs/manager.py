"""The jobs part of the coordinator: the scheduler core wired to the store, MQTT and the clock.

Every change goes through ``core.Scheduler`` (the decisions) and is written to the store (the
truth) before anyone is told: a submit is acknowledged only once its job is on disk, and an
attempt is recorded as starting before its run command leaves, so a ``kill -9`` between the
two leaves an attempt whose lease simply expires (it never runs twice at once: the next attempt
is made only after that). Lease renewals alone are kept in memory (a restart renews every
lease anyway). Commands go out in tasks of their own: their replies come through the same MQTT
loop that delivers statuses here.

Logs: chunks are stored as they come (a resent one is kept once). The node says in each
status how many chunks the attempt has sent; an auditor asks it again (``resend_log``) for
any missing, and marks those the node no longer holds as gaps, so a log is always read whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ...atomic import atomic_write, fsync_dir
from ...protocol.mqtt import (
    MAX_RESEND,
    CancelJob,
    Command,
    HilRun,
    JobStatus,
    LogChunk,
    Reply,
    ResendLog,
    RunJob,
    job_command,
)
from .. import lifecycle as lc
from ..health import Health, may_take_work
from ..inventory import Inventory
from ..mqttlink import CommandFailed
from ..store import ArtifactRecord, JobRecord, LogChunkRecord, Store
from .core import (
    TERMINAL,
    Action,
    AttemptState,
    CancelAttempt,
    Dispatch,
    Job,
    JobState,
    JobStateError,
    NodeSlot,
    Scheduler,
    SchedulerConfig,
    UnknownJob,
    fits_somewhere,
)
from .spec import JobSpec

__all__ = ["ArtifactError", "JobManager"]

log = logging.getLogger("scalerunner.coordinator.jobs")

CommandSender = Callable[[str, Command], Awaitable[Reply]]
NO_LIMIT_MB = 2**40  # a node whose memory the inventory does not give: memory is no limit
AUDIT_INTERVAL = 1.0  # s between looks for missing log chunks
RESEND_TRIES = 10  # resend requests per attempt before the missing chunks become gaps
CHECK_HISTORY_JOBS = 10_000  # recent jobs read at start to recall each node's last health check


def check_history(jobs: Iterable[Job]) -> tuple[dict[str, float], dict[str, int]]:
    """Per node, when its last health check was asked for and how many other attempts were
    dispatched to it since, from the jobs the store holds: what ``_checked_at`` and ``_jobs_since``
    were before a restart. A node whose last check is older than the jobs read is not in them."""
    checked: dict[str, float] = {}
    dispatched: list[tuple[str, float]] = []
    for job in jobs:
        if job.check and job.pin is not None:
            checked[job.pin] = max(checked.get(job.pin, job.submitted_at), job.submitted_at)
        elif not job.check:
            dispatched += [(a.node, a.dispatched_at) for a in job.attempts]
    since = dict.fromkeys(checked, 0)
    for node, at in dispatched:
        if node in checked and at >= checked[node]:
            since[node] += 1
    return checked, since


class ArtifactError(Exception):
    """An upload that cannot be taken: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


@dataclass
class _LogAudit:
    """What the coordinator holds of one attempt's log, and how often it asked for the rest."""

    node: str
    held: set[int]
    expected: int = 0
    tries: int = 0
    asked_at: float = 0.0
    active: bool = True


@dataclass
class Counters:
    submitted: int = 0
    dispatched: int = 0
    retried: int = 0
    resend_requests: int = 0
    log_chunks: int = 0
    by_state: dict[str, int] = field(default_factory=dict)


class JobManager:
    """Holds the scheduler; ``start()``/``stop()``. ``send_command`` and ``api_url`` are set by
    the coordinator once the MQTT link and the API exist."""

    def __init__(
        self,
        inventory: Inventory,
        store: Store,
        nodes: Callable[[], dict[str, lc.NodeRecord]],
        state_dir: Path,
        *,
        config: SchedulerConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inventory = inventory
        self.store = store
        self.nodes = nodes
        self.state_dir = state_dir
        self.artifact_dir = state_dir / "artifacts"
        self.clock = clock
        self.scheduler = Scheduler(config or SchedulerConfig())
        self.send_command: CommandSender | None = None
        self.api_url: Callable[[], str] = lambda: ""
        self.ready: Callable[[], bool] = lambda: True
        self.counters = Counters()
        self._key = b""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._audit_task: asyncio.Task[None] | None = None
        self._audits: dict[tuple[str, int], _LogAudit] = {}
        self._stopping = False
        # health checks: report a check job's result to the lifecycle (set by the coordinator)
        self.report_check: Callable[[str, bool, str], Awaitable[None]] | None = None
        self._checked_at: dict[str, float] = {}  # node -> when its last check was asked for
        self._jobs_since: dict[str, int] = {}  # node -> jobs started since its last check

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._key = _load_key(self.state_dir / "job-token-key")
        now = self.clock()
        lease = self.scheduler.config.lease_s
        live = [s.value for s in JobState if s not in TERMINAL]
        for row in await self.store.list_jobs(live, limit=1_000_000):
            job = msgspec.convert(row.data, type=Job)
            a = job.active
            if a is not None:
                # Nothing was heard while the coordinator was down: count from this start.
                renewed = msgspec.structs.replace(a, lease_until=max(a.lease_until, now + lease))
                job = msgspec.structs.replace(job, attempts=(*job.attempts[:-1], renewed))
                held = set(await self.store.log_seqs(job.id, a.number))
                self._audits[(job.id, a.number)] = _LogAudit(a.node, held, a.log_chunks)
            self.scheduler.restore(job)
        # Health checks stay due on their own schedule across a restart (not counted from it).
        recent = await self.store.list_jobs(None, limit=CHECK_HISTORY_JOBS)
        checked, since = check_history(msgspec.convert(row.data, type=Job) for row in recent)
        self._checked_at.update(checked)
        self._jobs_since.update(since)
        self._loop_task = asyncio.create_task(self._loop(), name="jobs-scheduler")
        self._audit_task = asyncio.create_task(self._audit_loop(), name="jobs-log-audit")

    async def stop(self) -> None:
        # Also a flag: Python 3.11's wait_for can swallow a cancel that meets a wake-up.
        self._stopping = True
        self._wake.set()
        for task in [self._loop_task, self._audit_task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._loop_task = self._audit_task = None

    def add_node(self, inventory: Inventory) -> None:
        """A node joined at runtime (an enrolled machine): jobs and health checks may use it."""
        self.inventory = inventory
        self._wake.set()

    # -- what users ask ---------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> Job:
        """Queue a job; it is on disk when this returns."""
        async with self._lock:
            job_id = f"j-{secrets.token_hex(5)}"
            while job_id in self.scheduler.jobs or await self.store.get_job(job_id) is not None:
                job_id = f"j-{secrets.token_hex(5)}"
            job = self.scheduler.submit(job_id, spec, self.clock())
            await self._persist()
        self.counters.submitted += 1
        nodes = self._slots(all_nodes=True)
        if not fits_somewhere(spec, nodes):
            log.warning("job %s fits no node of the inventory; it waits", job_id, extra={"job": job_id})
        self._wake.set()
        return job

    async def cancel(self, job_id: str, reason: str) -> Job:
        await self.get(job_id)  # UnknownJob for a job that never was
        async with self._lock:
            if job_id not in self.scheduler.jobs:  # only jobs that are over leave memory
                over = await self.get(job_id)  # read again: it may have ended just now
                raise JobStateError(job_id, over.state.value, "cannot be cancelled: it is over")
            actions = self.scheduler.cancel(job_id, self.clock(), reason)
            await self._persist()
        self._carry_out(actions)
        return await self.get(job_id)

    async def get(self, job_id: str) -> Job:
        job = self.scheduler.jobs.get(job_id)
        if job is not None:
            return job
        row = await self.store.get_job(job_id)
        if row is None:
            raise UnknownJob(job_id)
        return msgspec.convert(row.data, type=Job)

    async def list_jobs(self, states: list[str] | None = None, limit: int = 100) -> list[Job]:
        rows = await self.store.list_jobs(states, limit)
        return [self.scheduler.jobs.get(r.id) or msgspec.convert(r.data, type=Job) for r in rows]

    async def log(
        self, job_id: str, after: tuple[int, int], limit: int = 1000
    ) -> tuple[list[LogChunkRecord], bool]:
        """Chunks after the ``(attempt, seq)`` cursor, stopping at the first hole (the auditor is
        fetching it: the reader never skips output), and whether the log is complete."""
        job = await self.get(job_id)
        rows = await self.store.log_chunks(job_id, after=after, limit=limit)
        attempt, seq = after
        whole: list[LogChunkRecord] = []
        for r in rows:
            expected_seq = seq + 1 if r.attempt == attempt else 0
            if r.seq != expected_seq:
                break
            whole.append(r)
            attempt, seq = r.attempt, r.seq
        done = job.state in TERMINAL and len(whole) == len(rows) and not self._missing(job)
        return whole, done

    def _missing(self, job: Job) -> bool:
        """Whether any attempt of the job still waits for chunks the node said it sent."""
        return any(
            (job.id, a.number) in self._audits
            and len(self._audits[(job.id, a.number)].held) < self._audits[(job.id, a.number)].expected
            for a in job.attempts
        )

    async def wait_changed(self, timeout: float) -> None:
        """Return when any job changed or a chunk arrived, or after ``timeout``."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    # -- what nodes say ---------------------------------------------------------------------------

    async def on_status(self, status: JobStatus) -> None:
        now = self.clock()
        async with self._lock:
            if status.phase == "finished":
                assert status.end is not None
                actions = self.scheduler.finished(
                    status.job,
                    status.attempt,
                    status.node,
                    now,
                    end=status.end,
                    exit_code=status.exit_code,
                    detail=status.detail,
                    log_chunks=status.log_chunks,
                )
            else:
                actions = self.scheduler.started(
                    status.job, status.attempt, status.node, now, log_chunks=status.log_chunks
                )
            await self._persist(quiet_ok=status.phase == "heartbeat")
        audit = self._audits.get((status.job, status.attempt))
        if audit is not None and audit.node == status.node:
            audit.expected = max(audit.expected, status.log_chunks)
            audit.active = status.phase != "finished"
        self._carry_out(actions)
        self._wake.set()

    async def on_log(self, chunk: LogChunk) -> None:
        key = (chunk.job, chunk.attempt)
        audit = self._audits.get(key)
        if audit is None or audit.node != chunk.node:
            job = self.scheduler.jobs.get(chunk.job)
            ours = job is not None and any(
                a.number == chunk.attempt and a.node == chunk.node for a in job.attempts
            )
            if not ours:
                log.info(
                    "log chunk of an attempt not known here", extra={"job": chunk.job, "node": chunk.node}
                )
                return
            audit = self._audits[key] = _LogAudit(chunk.node, set(await self.store.log_seqs(*key)))
        record = LogChunkRecord(
            job=chunk.job,
            attempt=chunk.attempt,
            seq=chunk.seq,
            stream=chunk.stream,
            data=chunk.data,
            at=self.clock(),
        )
        await self.store.add_log_chunks([record])
        audit.held.add(chunk.seq)
        audit.expected = max(audit.expected, chunk.seq + 1)
        self.counters.log_chunks += 1
        await self._notify()

    # -- lifecycle actions ------------------------------------------------------------------------

    async def requeue_node(self, action: lc.RequeueJobs) -> None:
        """lc.RequeueJobs: the node is lost or was power-cycled; its attempts are lost."""
        async with self._lock:
            self.scheduler.node_lost(action.node, self.clock(), action.reason)
            await self._persist()
        self._wake.set()

    async def run_health_check(self, action: lc.RunHealthCheck) -> None:
        """lc.RunHealthCheck: queue the node type's health check, pinned to the node."""
        node = self.inventory.node(action.node)
        check = self.inventory.health_check(node)
        if check is None:
            raise LookupError(
                f"no [[health_checks]] entry fits node {node.name} ({node.arch}, labels {list(node.labels)})"
            )
        await self._submit_check(node.name, action.reason)

    async def _submit_check(self, node: str, reason: str) -> Job | None:
        check = self.inventory.health_check(self.inventory.node(node))
        if check is None:
            return None
        if any(j.check and j.pin == node for j in self.scheduler.jobs.values() if j.state not in TERMINAL):
            return None  # one is queued or running already
        spec = JobSpec(
            name=f"health check of {node}",
            image=check.image,
            command=list(check.command) if check.command is not None else None,
            script=check.script,
            timeout=check.timeout,
            retries=0,
            priority=100,
            project="health-checks",
        )
        async with self._lock:
            job_id = f"j-{secrets.token_hex(5)}"
            job = self.scheduler.submit(job_id, spec, self.clock(), pin=node, check=True)
            await self._persist()
        self._checked_at[node] = self.clock()
        self._jobs_since[node] = 0
        log.info(
            "health check %s queued for %s: %s", job_id, node, reason, extra={"job": job_id, "node": node}
        )
        self._wake.set()
        return job

    async def _checks_due(self, now: float) -> None:
        """Every N hours or N jobs, a good node that is free gets its health check again."""
        records = self.nodes()
        busy = {a.node for j in self.scheduler.jobs.values() if (a := j.active) is not None}
        for node in self.inventory.nodes:
            check = self.inventory.health_check(node)
            rec = records.get(node.name)
            if check is None or rec is None or node.name in busy or rec.health is not Health.GOOD:
                continue
            if rec.state not in (lc.NodeLifecycle.IDLE, lc.NodeLifecycle.BUSY):
                continue
            since = self._checked_at.setdefault(node.name, now)
            if now - since >= check.every_hours * 3600:
                await self._submit_check(node.name, f"{check.every_hours:g} h since the last check")
            elif check.every_jobs and self._jobs_since.get(node.name, 0) >= check.every_jobs:
                await self._submit_check(node.name, f"{check.every_jobs} jobs since the last check")

    async def _report(self, job: Job) -> None:
        """A health check is over: its result (with the log's tail) goes to the lifecycle. One
        the infrastructure lost or that was cancelled proves nothing and is not reported."""
        a = job.current
        if job.pin is None or a is None or self.report_check is None:
            return
        if (
            job.state not in (JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT)
            or a.state is AttemptState.LOST
        ):
            return
        passed = job.state is JobState.SUCCEEDED
        ref = job.id
        if not passed:
            await asyncio.sleep(1.0)  # let the last chunks arrive
            chunks = await self.store.log_chunks(job.id, attempt=a.number, limit=100_000)
            tail = "".join(c.data for c in chunks)[-400:].strip()
            ref = f"{job.id}, {job.reason}" + (f"; log tail: {tail}" if tail else "")
        try:
            await self.report_check(job.pin, passed, ref)
        except Exception:
            log.exception(
                "cannot report the health check of %s", job.pin, extra={"job": job.id, "node": job.pin}
            )

    # -- artifacts --------------------------------------------------------------------------------

    def upload_token(self, job_id: str, attempt: int) -> str:
        """The bearer token of one attempt's uploads (an HMAC: nothing to store, survives restarts)."""
        return hmac.new(self._key, f"{job_id}/{attempt}".encode(), hashlib.sha256).hexdigest()

    def check_upload_token(self, job_id: str, attempt: int, token: str) -> bool:
        return hmac.compare_digest(self.upload_token(job_id, attempt).encode(), token.encode())

    async def put_artifact(
        self, job_id: str, attempt: int, name: str, body: AsyncIterator[bytes]
    ) -> ArtifactRecord:
        """Store an uploaded file content-addressed (``artifacts/ab/abcdef...``) and record it."""
        problem = artifact_name_problem(name)
        if problem:
            raise ArtifactError(400, f"artifact name {name!r} {problem}")
        job = await self.get(job_id)
        if not any(a.number == attempt for a in job.attempts):
            raise ArtifactError(404, f"job {job_id} has no attempt {attempt}")
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.artifact_dir, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                async for piece in body:
                    digest.update(piece)
                    size += len(piece)
                    f.write(piece)
                f.flush()
                os.fsync(f.fileno())
            sha = digest.hexdigest()
            final = self.artifact_path(sha)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            fsync_dir(final.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        record = ArtifactRecord(
            job=job_id, attempt=attempt, name=name, sha256=sha, size=size, at=self.clock()
        )
        await self.store.add_artifact(record)
        log.info(
            "artifact stored", extra={"job": job_id, "attempt": attempt, "artifact": name, "sha256": sha}
        )
        return record

    def artifact_path(self, sha256: str) -> Path:
        return self.artifact_dir / sha256[:2] / sha256

    def collector(self) -> Collector:
        return _JobCollector(self)

    # -- the loops --------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            now = self.clock()
            async with self._lock:
                actions = self.scheduler.tick(now)
                if self.ready():
                    actions += self.scheduler.schedule(self._slots(), now)
                await self._persist()
            self._carry_out(actions)
            if self.ready():
                await self._checks_due(now)
            deadline = self.scheduler.next_deadline()
            wait = 5.0 if deadline is None else min(max(deadline - self.clock(), 0.05), 5.0)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _audit_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(AUDIT_INTERVAL)
            try:
                await self._audit(self.clock())
            except Exception:  # a task of its own: log, and look again next time
                log.exception("log audit failed")

    async def _audit(self, now: float) -> None:
        for (job_id, attempt), audit in list(self._audits.items()):
            missing = sorted(set(range(audit.expected)) - audit.held)
            if not missing:
                if not audit.active:
                    del self._audits[(job_id, attempt)]
                continue
            if now - audit.asked_at < 2 * AUDIT_INTERVAL:
                continue  # the last request may still be answering
            audit.asked_at = now
            audit.tries += 1
            if audit.tries > RESEND_TRIES:
                await self._mark_gaps(job_id, attempt, missing, f"not received after {RESEND_TRIES} requests")
                continue
            ask = missing[:MAX_RESEND]
            self.counters.resend_requests += 1
            log.info(
                "asking for %d missing log chunks",
                len(ask),
                extra={"job": job_id, "attempt": attempt, "node": audit.node},
            )
            self._spawn(self._resend(job_id, attempt, audit.node, ask), f"resend-{job_id}-{attempt}")

    async def _resend(self, job_id: str, attempt: int, node: str, seqs: list[int]) -> None:
        if self.send_command is None:
            return
        try:
            reply = await self.send_command(
                node, job_command("resend_log", ResendLog(job=job_id, attempt=attempt, seqs=seqs))
            )
        except Exception as exc:
            log.warning("resend_log to %s failed: %s", node, exc, extra={"job": job_id, "node": node})
            return
        gone = [s for s in reply.result.get("missing", []) if isinstance(s, int)]
        if gone:
            await self._mark_gaps(job_id, attempt, gone, f"{node} no longer held them")

    async def _mark_gaps(self, job_id: str, attempt: int, seqs: list[int], why: str) -> None:
        audit = self._audits.get((job_id, attempt))
        at = self.clock()
        records = [
            LogChunkRecord(
                job=job_id, attempt=attempt, seq=s, stream="gap", data=f"[log chunk {s} lost: {why}]\n", at=at
            )
            for s in seqs
        ]
        await self.store.add_log_chunks(records)
        if audit is not None:
            audit.held.update(seqs)
        log.warning(
            "log chunks lost: %s", why, extra={"job": job_id, "attempt": attempt, "chunks": len(seqs)}
        )
        await self._notify()

    # -- helpers ----------------------------------------------------------------------------------

    def _slots(self, all_nodes: bool = False) -> list[NodeSlot]:
        records = self.nodes()
        slots = []
        for n in self.inventory.nodes:
            rec = records.get(n.name)
            connected = rec is not None and rec.state in (lc.NodeLifecycle.IDLE, lc.NodeLifecycle.BUSY)
            available = connected and rec is not None and may_take_work(rec.health)
            if not (connected or all_nodes):
                continue
            cpus = float(n.cpus) if n.cpus else float(rec.slots if rec is not None else 1)
            slots.append(
                NodeSlot(
                    n.name,
                    n.arch,
                    frozenset(n.labels),
                    cpus,
                    n.memory_mb or NO_LIMIT_MB,
                    available,
                    connected,
                )
            )
        return slots

    async def _persist(self, quiet_ok: bool = False) -> None:
        """Write the jobs the scheduler changed (a lease renewal alone stays in memory)."""
        transitions, changed = self.scheduler.take()
        if quiet_ok and not transitions:
            return
        if changed:
            await self.store.put_jobs([_record(j) for j in changed])
        for t in transitions:
            self.counters.by_state[t.new] = self.counters.by_state.get(t.new, 0) + 1
            if t.new == JobState.QUEUED and t.old:
                self.counters.retried += 1
            log.info(
                "job %s: %s -> %s (%s)",
                t.job,
                t.old or "-",
                t.new,
                t.reason,
                extra={"job": t.job, "old": t.old, "new": t.new, "attempt": t.attempt},
            )
            if t.new == JobState.STARTING:
                job = self.scheduler.jobs[t.job]
                a = job.attempts[-1]
                self._audits[(t.job, a.number)] = _LogAudit(a.node, set())
                if not job.check:
                    self._jobs_since[a.node] = self._jobs_since.get(a.node, 0) + 1
        for job in changed:
            if job.state in TERMINAL and job.check:
                self._spawn(self._report(job), f"check-result-{job.id}")
            if job.state in TERMINAL:
                for a in job.attempts:
                    audit = self._audits.get((job.id, a.number))
                    if audit is not None:
                        audit.active = False
                self.scheduler.forget(job.id)
        if transitions or changed:
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self.counters.dispatched += 1
                self._spawn(self._dispatch(action), f"run-{action.job}-{action.attempt}")
            elif isinstance(action, CancelAttempt):
                self._spawn(self._cancel(action), f"cancel-{action.job}-{action.attempt}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, d: Dispatch) -> None:
        run = RunJob(
            job=d.job,
            attempt=d.attempt,
            argv=list(d.spec.command) if d.spec.command is not None else None,
            script=d.spec.script,
            image=d.spec.image,
            env=dict(d.spec.env),
            cpus=d.spec.cpus,
            memory_mb=d.spec.memory,
            timeout_s=d.spec.timeout,
            artifacts=list(d.spec.artifacts),
            lease_s=d.lease_s,
            upload_url=f"{self.api_url()}/api/v1/jobs/{d.job}/attempts/{d.attempt}/artifacts",
            upload_token=self.upload_token(d.job, d.attempt),
            hil=None if d.spec.hil is None else msgspec.convert(msgspec.to_builtins(d.spec.hil), HilRun),
            network=d.spec.network,
        )
        why = ""
        if self.send_command is None:
            why = "no MQTT link"
        else:
            try:
                reply = await self.send_command(d.node, job_command("run", run))
                if not reply.ok:
                    why = f"node {d.node} refused 'run': {reply.error}"
            except CommandFailed as exc:
                why = str(exc)
            except Exception as exc:  # no answer: the node may have it, so only its lease decides
                log.warning(
                    "run command to %s not confirmed (%s); its lease decides",
                    d.node,
                    exc,
                    extra={"job": d.job, "node": d.node},
                )
                return
        if why:
            log.warning("dispatch to %s failed: %s", d.node, why, extra={"job": d.job, "node": d.node})
            async with self._lock:
                actions = self.scheduler.dispatch_failed(d.job, d.attempt, d.node, self.clock(), why)
                await self._persist()
            self._carry_out(actions)
            self._wake.set()

    async def _cancel(self, c: CancelAttempt) -> None:
        if self.send_command is None:
            return
        try:
            await self.send_command(
                c.node, job_command("cancel", CancelJob(job=c.job, attempt=c.attempt, reason=c.reason))
            )
        except Exception as exc:  # the node may be gone: its lease or its loss ends the attempt
            log.info("cancel on %s not confirmed: %s", c.node, exc, extra={"job": c.job, "node": c.node})


class _JobCollector(Collector):
    """Prometheus: the queue and what it did, read at scrape time."""

    def __init__(self, jobs: JobManager) -> None:
        self._jobs = jobs

    def collect(self) -> Iterable[Metric]:
        s = self._jobs.scheduler
        c = self._jobs.counters
        states = Counter(j.state.value for j in s.jobs.values())
        jobs = GaugeMetricFamily("scalerunner_jobs", "jobs not over, by state", labels=["state"])
        for state in (JobState.QUEUED, JobState.STARTING, JobState.RUNNING):
            jobs.add_metric([state.value], float(states[state.value]))
        yield jobs
        yield GaugeMetricFamily("scalerunner_jobs_queued", "jobs waiting for a node", value=states["queued"])
        running = states["running"] + states["starting"]
        yield GaugeMetricFamily("scalerunner_jobs_running", "attempts in flight", value=running)
        for name, value, text in (
            ("submitted", c.submitted, "jobs submitted"),
            ("dispatched", c.dispatched, "attempts handed to nodes"),
            ("retried", c.retried, "attempts lost and re-queued"),
            ("log_chunks", c.log_chunks, "log chunks received"),
            ("log_resend_requests", c.resend_requests, "requests for missing log chunks"),
        ):
            yield CounterMetricFamily(f"scalerunner_jobs_{name}", text, value=float(value))
        ended = CounterMetricFamily("scalerunner_jobs_ended", "jobs that ended, by state", labels=["state"])
        for state in sorted(TERMINAL):
            ended.add_metric([state.value], float(c.by_state.get(state.value, 0)))
        yield ended


def _record(job: Job) -> JobRecord:
    return JobRecord(
        id=job.id,
        state=job.state.value,
        name=job.spec.name,
        project=job.spec.project,
        submitted_at=job.submitted_at,
        updated_at=job.updated_at,
        data=msgspec.to_builtins(job),
    )


def artifact_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an artifact (a relative path inside the job's work dir), or None."""
    if not name or len(name) > 1024:
        return "must be 1-1024 characters"
    if "\x00" in name or "\\" in name:
        return "must not hold NUL or backslash"
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name != p.as_posix():
        return "must be a plain relative path without '..'"
    return None


def _load_key(path: Path) -> bytes:
    """The secret behind the per-attempt upload tokens, made once and kept (0600)."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (key.hex() + "\n").encode())
    return key
