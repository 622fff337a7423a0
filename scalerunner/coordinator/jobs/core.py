"""The job queue and scheduler: pure, no I/O, driven by events and a clock passed in.

``Scheduler`` holds every job that is not over yet (and remembers finished ones until the
shell forgets them). Each method applies one event -- a submit, a cancel, a node's status, a
lost node, the clock -- and returns what the shell must do (``Dispatch`` a run command,
``CancelAttempt`` on a node); every change of a job's state is recorded as a ``JobTransition``
with its reason. docs/jobs.md describes the rules for users.

Job states::

    queued -> starting -> running -> succeeded | failed | timed_out
       ^          \\           \\______ lost (node gone, lease expired) -> queued (next attempt)
       |___________\\_________________/                                  or failed (retries spent)
    cancelled from any state that is not over (an attempt in flight ends first, on the node)

- An attempt is numbered from 1. ``retries`` bounds the attempts lost to the infrastructure
  (a node lost or power-cycled, a lease that expired, a node that could not run it): after
  ``retries + 1`` such attempts the job fails. The job's own exit code is final: a test that
  failed is not re-run to hide it.
- A dispatched attempt holds a lease: the node's started/heartbeat statuses renew it; one not
  renewed in ``lease_s`` fails the attempt (lost). The coordinator also backstops the job's
  timeout: ``timeout + lease_s`` after it started, the attempt ends as timed out.
- A node gets work only if it is available (the lifecycle says its agent is connected and
  its health is good, see ``NodeSlot``), matches the job's arch and labels, and has the cpus
  and memory free; among those the one running the fewest attempts, then the one that ran the
  fewest so far, wins: work spreads instead of wearing out the first node.
- Order: higher priority first; within a priority, the project with the fewest attempts in
  flight first (fair share), then the oldest job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import msgspec

from .spec import JobSpec

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "Action",
    "Attempt",
    "AttemptState",
    "CancelAttempt",
    "Dispatch",
    "Job",
    "JobState",
    "JobStateError",
    "JobTransition",
    "NodeSlot",
    "Scheduler",
    "SchedulerConfig",
    "UnknownJob",
    "hil_label",
]


class JobState(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"  # given to a node, not yet heard running
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})


class AttemptState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # exited 0
    FAILED = "failed"  # exited non-zero, or killed
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"  # the infrastructure lost it (node, lease, fault): counts against retries


ACTIVE = frozenset({AttemptState.STARTING, AttemptState.RUNNING})


class JobStateError(Exception):
    """An operation the job's state forbids; names the job and its state."""

    def __init__(self, job: str, state: str, detail: str) -> None:
        super().__init__(f"job {job} is {state}, {detail}")
        self.job = job
        self.state = state


class UnknownJob(KeyError):
    def __init__(self, job: str) -> None:
        super().__init__(job)
        self.job = job

    def __str__(self) -> str:
        return f"no job {self.job!r}"


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    number: int
    node: str
    state: AttemptState = AttemptState.STARTING
    dispatched_at: float
    started_at: float | None = None
    lease_until: float
    ended_at: float | None = None
    exit_code: int | None = None
    reason: str = ""
    log_chunks: int = 0  # as last reported by the node


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A job and its attempts. ``cancel_reason``: a cancel was asked while an attempt was in
    flight; the job becomes cancelled when that attempt ends."""

    id: str
    spec: JobSpec
    state: JobState = JobState.QUEUED
    reason: str = "submitted"
    submitted_at: float
    updated_at: float
    attempts: tuple[Attempt, ...] = ()
    exit_code: int | None = None
    cancel_reason: str | None = None
    pin: str | None = None  # runs on this node only (a health check)
    check: bool = False  # a health check: may run on a connected node whose health is not good yet
    history: tuple[tuple[float, str, str], ...] = ()  # (at, state entered, reason), oldest first

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def active(self) -> Attempt | None:
        a = self.current
        return a if a is not None and a.state in ACTIVE else None

    @property
    def lost_attempts(self) -> int:
        return sum(1 for a in self.attempts if a.state is AttemptState.LOST)


@dataclass(frozen=True, slots=True)
class JobTransition:
    job: str
    old: str
    new: str
    reason: str
    at: float
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send the run command for this attempt to ``node`` (it is already recorded as starting)."""

    job: str
    attempt: int
    node: str
    spec: JobSpec
    lease_s: float


@dataclass(frozen=True, slots=True)
class CancelAttempt:
    """Tell ``node`` to stop this attempt (it may have ended already: harmless)."""

    job: str
    attempt: int
    node: str
    reason: str


Action = Dispatch | CancelAttempt


@dataclass(frozen=True, slots=True)
class NodeSlot:
    """What the scheduler needs of a node, given fresh at every ``schedule``. ``available``: its
    agent is connected, it is not draining and its health is good (the lifecycle decides): it
    takes work. ``connected`` without ``available``: it takes only the health check pinned to it."""

    name: str
    arch: str
    labels: frozenset[str]
    cpus: float
    memory_mb: int
    available: bool = True
    connected: bool = False  # its agent is connected and it is not draining (health aside): checks run


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    lease_s: float = 30.0  # an attempt not heard from for this long is lost
    max_dispatch: int = 1000  # attempts handed out per schedule() call


End = Literal["exited", "timeout", "killed", "cancelled", "fault"]


@dataclass
class Scheduler:
    """The jobs and the decisions about them. Mutates itself; returns actions and records
    transitions in ``transitions`` (the shell drains it after each call, with ``take``)."""

    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    jobs: dict[str, Job] = field(default_factory=dict)
    dispatched: Counter[str] = field(default_factory=Counter)  # attempts per node, ever
    transitions: list[JobTransition] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)  # job ids changed since the last take()

    # -- queries --------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    def queued(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state is JobState.QUEUED]

    def running_on(self, node: str) -> list[Job]:
        return [j for j in self.jobs.values() if (a := j.active) is not None and a.node == node]

    def take(self) -> tuple[list[JobTransition], list[Job]]:
        """The transitions recorded and the jobs changed since the last take (to store them)."""
        transitions, self.transitions = self.transitions, []
        changed = [self.jobs[j] for j in sorted(self.changed) if j in self.jobs]
        self.changed = set()
        return transitions, changed

    def restore(self, job: Job) -> None:
        """Load a stored job (at coordinator start). Counts its attempts in ``dispatched``."""
        self.jobs[job.id] = job
        for a in job.attempts:
            self.dispatched[a.node] += 1

    def forget(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.state in TERMINAL:
            del self.jobs[job_id]

    # -- events ---------------------------------------------------------------------------------

    def submit(
        self, job_id: str, spec: JobSpec, at: float, *, pin: str | None = None, check: bool = False
    ) -> Job:
        if job_id in self.jobs:
            raise ValueError(f"job {job_id} exists already")
        job = Job(
            id=job_id,
            spec=spec,
            submitted_at=at,
            updated_at=at,
            pin=pin,
            check=check,
            history=((at, "queued", "submitted"),),
        )
        self.jobs[job_id] = job
        self.changed.add(job_id)
        self.transitions.append(JobTransition(job_id, "", JobState.QUEUED.value, "submitted", at))
        return job

    def cancel(self, job_id: str, at: float, reason: str = "operator request") -> list[Action]:
        job = self.get(job_id)
        if job.state in TERMINAL:
            raise JobStateError(job_id, job.state.value, "cannot be cancelled: it is over")
        attempt = job.active
        if attempt is None:
            self._move(job, JobState.CANCELLED, f"cancelled: {reason}", at)
            return []
        if job.cancel_reason is None:
            self._put(msgspec.structs.replace(job, cancel_reason=reason, updated_at=at))
        return [CancelAttempt(job_id, attempt.number, attempt.node, f"cancelled: {reason}")]

    def started(self, job_id: str, attempt: int, node: str, at: float, log_chunks: int = 0) -> list[Action]:
        """A started or heartbeat status: the attempt runs; its lease is renewed."""
        current = self._current(job_id, attempt, node)
        if current is None:
            return self._stale(job_id, attempt, node)
        job, a = current
        renewed = msgspec.structs.replace(
            a,
            state=AttemptState.RUNNING,
            started_at=a.started_at if a.started_at is not None else at,
            lease_until=at + self.config.lease_s,
            log_chunks=max(a.log_chunks, log_chunks),
        )
        job = self._with_attempt(job, renewed, at)
        if job.state is JobState.STARTING:
            self._move(job, JobState.RUNNING, f"running on {node}", at, attempt)
        else:
            self._put(job)
        if job.cancel_reason is not None:  # the cancel command may have been lost: say it again
            return [CancelAttempt(job_id, attempt, node, f"cancelled: {job.cancel_reason}")]
        return []

    def finished(
        self,
        job_id: str,
        attempt: int,
        node: str,
        at: float,
        *,
        end: End,
        exit_code: int | None,
        detail: str = "",
        log_chunks: int = 0,
    ) -> list[Action]:
        """The node's finished status for an attempt."""
        current = self._current(job_id, attempt, node)
        if current is None:
            return []  # an old attempt's end: nothing runs there any more
        job, a = current
        how = f"{end}" + (f" with exit code {exit_code}" if exit_code is not None else "")
        how += f": {detail}" if detail else ""
        if end == "fault":
            state, job_state = AttemptState.LOST, None
        elif job.cancel_reason is not None or end == "cancelled":
            state, job_state = AttemptState.CANCELLED, JobState.CANCELLED
            how = f"cancelled: {job.cancel_reason or detail or 'on the node'}"
        elif end == "timeout":
            state, job_state = AttemptState.TIMED_OUT, JobState.TIMED_OUT
            how = f"timed out after {_secs(job.spec.timeout)} s on {node}"
        elif end == "exited" and exit_code == 0:
            state, job_state = AttemptState.SUCCEEDED, JobState.SUCCEEDED
        else:
            state, job_state = AttemptState.FAILED, JobState.FAILED
        ended = msgspec.structs.replace(
            a,
            state=state,
            ended_at=at,
            exit_code=exit_code,
            reason=how,
            log_chunks=max(a.log_chunks, log_chunks),
        )
        job = self._with_attempt(job, ended, at)
        if job_state is None:
            self._requeue_or_fail(job, f"node {node} could not run attempt {attempt}: {detail}", at)
        else:
            job = msgspec.structs.replace(job, exit_code=exit_code)
            self._move(job, job_state, f"attempt {attempt} on {node}: {how}", at, attempt)
        return []

    def dispatch_failed(self, job_id: str, attempt: int, node: str, at: float, why: str) -> list[Action]:
        """The node refused the run command: the attempt is lost (and the node told to drop it,
        should it have it after all). A command not answered is left to the lease instead: the
        node may be running it, and a next attempt now could run beside it."""
        current = self._current(job_id, attempt, node)
        if current is None:
            return []
        job, a = current
        self._lose(job, a, f"{node} did not take it: {why}", at)
        return [CancelAttempt(job_id, attempt, node, f"dispatch failed: {why}")]

    def node_lost(self, node: str, at: float, reason: str) -> list[Action]:
        """The node was lost or power-cycled: every attempt in flight there is lost."""
        for job in self.running_on(node):
            a = job.active
            assert a is not None
            self._lose(job, a, f"node {node} lost: {reason}", at)
        return []

    def tick(self, at: float) -> list[Action]:
        """The clock: expire leases, backstop timeouts."""
        actions: list[Action] = []
        for job in list(self.jobs.values()):
            a = job.active
            if a is None:
                continue
            if a.started_at is not None and at >= a.started_at + job.spec.timeout + self.config.lease_s:
                reason = (
                    f"timed out: still running {_secs(at - a.started_at)} s after it started (coordinator)"
                )
                ended = msgspec.structs.replace(a, state=AttemptState.TIMED_OUT, ended_at=at, reason=reason)
                state = JobState.CANCELLED if job.cancel_reason is not None else JobState.TIMED_OUT
                self._move(self._with_attempt(job, ended, at), state, reason, at, a.number)
                actions.append(CancelAttempt(job.id, a.number, a.node, reason))
            elif at >= a.lease_until:
                self._lose(
                    job, a, f"no word from {a.node} for {_secs(self.config.lease_s)} s (lease expired)", at
                )
                actions.append(CancelAttempt(job.id, a.number, a.node, "lease expired"))
        return actions

    def next_deadline(self) -> float | None:
        due: list[float] = []
        for job in self.jobs.values():
            a = job.active
            if a is None:
                continue
            due.append(a.lease_until)
            if a.started_at is not None:
                due.append(a.started_at + job.spec.timeout + self.config.lease_s)
        return min(due, default=None)

    def schedule(self, nodes: Sequence[NodeSlot], at: float) -> list[Action]:
        """Hand queued jobs to nodes that can take them now."""
        free = {n.name: [n.cpus, n.memory_mb] for n in nodes if n.available or n.connected}
        in_flight: Counter[str] = Counter()
        by_project: Counter[str] = Counter()
        for job in self.jobs.values():
            a = job.active
            if a is None:
                continue
            by_project[job.spec.project] += 1
            in_flight[a.node] += 1
            if a.node in free:
                free[a.node][0] -= job.spec.cpus
                free[a.node][1] -= job.spec.memory
        slots = {n.name: n for n in nodes if n.available or n.connected}
        actions: list[Action] = []
        waiting = self.queued()
        while waiting and len(actions) < self.config.max_dispatch:
            waiting.sort(key=lambda j: (-j.spec.priority, by_project[j.spec.project], j.submitted_at, j.id))
            job = waiting.pop(0)
            fits = [
                s
                for s in slots.values()
                if (s.available or (job.check and s.connected))
                and (job.pin is None or job.pin == s.name)
                and _matches(job.spec, s)
                and free[s.name][0] >= job.spec.cpus - 1e-9
                and free[s.name][1] >= job.spec.memory
            ]
            if not fits:
                continue  # it waits; smaller or other jobs may still fit (backfill)
            node = min(fits, key=lambda s: (in_flight[s.name], self.dispatched[s.name], s.name))
            number = len(job.attempts) + 1
            attempt = Attempt(
                number=number, node=node.name, dispatched_at=at, lease_until=at + self.config.lease_s
            )
            job = msgspec.structs.replace(job, attempts=(*job.attempts, attempt))
            self._move(job, JobState.STARTING, f"attempt {number} given to {node.name}", at, number)
            free[node.name][0] -= job.spec.cpus
            free[node.name][1] -= job.spec.memory
            in_flight[node.name] += 1
            by_project[job.spec.project] += 1
            self.dispatched[node.name] += 1
            actions.append(Dispatch(job.id, number, node.name, job.spec, self.config.lease_s))
        return actions

    # -- helpers --------------------------------------------------------------------------------

    def _current(self, job_id: str, attempt: int, node: str) -> tuple[Job, Attempt] | None:
        """The job and attempt a node's status speaks of, if it is the attempt in flight."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        a = job.active
        if a is None or a.number != attempt or a.node != node:
            return None
        return job, a

    def _stale(self, job_id: str, attempt: int, node: str) -> list[Action]:
        """A node runs an attempt the coordinator does not (an old one, a cancelled job): stop it."""
        return [CancelAttempt(job_id, attempt, node, "not the attempt the coordinator runs")]

    def _lose(self, job: Job, a: Attempt, reason: str, at: float) -> None:
        lost = msgspec.structs.replace(a, state=AttemptState.LOST, ended_at=at, reason=reason)
        self._requeue_or_fail(self._with_attempt(job, lost, at), reason, at)

    def _requeue_or_fail(self, job: Job, reason: str, at: float) -> None:
        n = job.attempts[-1].number
        if job.cancel_reason is not None:
            self._move(job, JobState.CANCELLED, f"cancelled: {job.cancel_reason} ({reason})", at, n)
        elif job.lost_attempts > job.spec.retries:
            self._move(job, JobState.FAILED, f"{reason}; gave up after {job.lost_attempts} attempts", at, n)
        else:
            self._move(job, JobState.QUEUED, f"{reason}; re-queued for attempt {n + 1}", at, n)

    def _with_attempt(self, job: Job, attempt: Attempt, at: float) -> Job:
        attempts = tuple(attempt if x.number == attempt.number else x for x in job.attempts)
        return msgspec.structs.replace(job, attempts=attempts, updated_at=at)

    def _move(self, job: Job, state: JobState, reason: str, at: float, attempt: int = 0) -> None:
        if state is not job.state:
            self.transitions.append(JobTransition(job.id, job.state.value, state.value, reason, at, attempt))
            job = msgspec.structs.replace(job, history=(*job.history, (at, state.value, reason)))
        self._put(msgspec.structs.replace(job, state=state, reason=reason, updated_at=at))

    def _put(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.changed.add(job.id)


def hil_label(board: str) -> str:
    """The node label saying a node has ``board`` on its HIL bench (docs/bench.md)."""
    return f"hil:{board}"


def _matches(spec: JobSpec, node: NodeSlot) -> bool:
    if spec.arch is not None and spec.arch != node.arch:
        return False
    wanted = set(spec.labels)
    if spec.hil is not None:  # a HIL job goes only where its board is
        wanted.add(hil_label(spec.hil.board))
    return wanted <= node.labels


def fits_somewhere(spec: JobSpec, nodes: Iterable[NodeSlot]) -> bool:
    """Whether any node (available or not) could ever take the job: else it would wait forever."""
    return any(_matches(spec, n) and n.cpus >= spec.cpus and n.memory_mb >= spec.memory for n in nodes)


def _secs(seconds: float) -> str:
    rounded = round(float(seconds), 1)
    return str(int(rounded)) if rounded.is_integer() else f"{rounded:.1f}"
