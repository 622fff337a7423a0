"""Which GitHub workflow job has which runner: pure, no I/O, driven by events and a clock.

One ``Runner`` record per workflow job id, made when the job is first seen queued (by the
webhook or the reconciler, whichever comes first: the second finds the record and does
nothing, so a GitHub job never gets two runners at once). Each method applies one event and
returns what the shell must do::

    waiting -> requested -> starting -> idle -> busy -> done
       ^          |            |         |  \\____________ idle_timeout (no job within idle_timeout)
       |__________|____________|_________|  (request failed, runner ended without a job: retry)
    cancelled: the GitHub job completed or was cancelled before our runner took a job
    failed: no runner could be made after MAX_TRIES tries

- ``RequestRunner``: ask GitHub for a just-in-time config and submit the Scalerunner job.
- ``CancelRunner``: cancel the Scalerunner job (and remove the runner's registration).
- ``CheckIdle``: ask GitHub whether an idle runner is busy after all (its webhook may be lost)
  before it is ended for idling.

A runner made for job A may be handed job B by GitHub (both carry the labels): the webhook's
``runner_name`` says which of our runners is busy, whatever job it was made for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import msgspec

__all__ = [
    "ACTIVE",
    "MAX_TRIES",
    "TERMINAL",
    "Action",
    "CancelRunner",
    "CheckIdle",
    "RequestRunner",
    "Runner",
    "RunnerState",
    "Runners",
    "runner_name",
]

MAX_TRIES = 3  # runners of one GitHub job that ended without taking a job, before giving up
RETRY_BASE = 5.0  # s before the second try; doubled each time, capped
RETRY_CAP = 300.0
IDLE_RECHECK = 30.0  # s between asking GitHub whether an idle runner is busy, when it could not say
EXIT_GRACE = 120.0  # s a runner may go on running after GitHub said its job completed


class RunnerState(StrEnum):
    WAITING = "waiting"  # the GitHub job is queued and has no runner of ours (yet, or again)
    REQUESTED = "requested"  # its JIT config and Scalerunner job are being made
    STARTING = "starting"  # the Scalerunner job exists, not yet running
    IDLE = "idle"  # the runner runs; GitHub has not handed it a job
    BUSY = "busy"  # GitHub handed it a job
    DONE = "done"
    CANCELLED = "cancelled"
    IDLE_TIMEOUT = "idle_timeout"
    FAILED = "failed"


TERMINAL = frozenset({RunnerState.DONE, RunnerState.CANCELLED, RunnerState.IDLE_TIMEOUT, RunnerState.FAILED})
ACTIVE = frozenset({RunnerState.REQUESTED, RunnerState.STARTING, RunnerState.IDLE, RunnerState.BUSY})
_HAS_JOB = frozenset({RunnerState.STARTING, RunnerState.IDLE, RunnerState.BUSY})


class Runner(msgspec.Struct, frozen=True, kw_only=True):
    gh_job: int  # the workflow job id
    repo: str  # OWNER/REPO
    pool: str
    labels: tuple[str, ...]  # the workflow job's labels (the runner registers with them)
    state: RunnerState = RunnerState.WAITING
    reason: str = ""
    since: float  # when it entered its state
    requests: int = 0  # runner requests made (each names a new runner)
    failures: int = 0  # requests failed in a row (GitHub down, rate limited): back off, keep trying
    unused: int = 0  # runners that ended without taking a job: MAX_TRIES of them and it fails
    retry_at: float = 0.0  # WAITING: when the next request is due
    name: str = ""  # the current runner's name
    runner_id: int | None = None  # its id on GitHub
    job: str | None = None  # its Scalerunner job
    running_at: float | None = None
    check_at: float | None = None  # IDLE: when to ask GitHub whether it is busy
    exit_by: float | None = None  # BUSY: its job completed on GitHub; the runner must be gone by then
    taken_by: str = ""  # the runner GitHub handed this workflow job to, if known
    gh_done: bool = False  # GitHub says the workflow job completed (any conclusion)
    history: tuple[tuple[float, str, str], ...] = ()


@dataclass(frozen=True)
class RequestRunner:
    gh_job: int
    repo: str
    pool: str
    labels: tuple[str, ...]
    name: str


@dataclass(frozen=True)
class CancelRunner:
    gh_job: int
    job: str | None  # the Scalerunner job to cancel, if one was made
    repo: str
    pool: str
    runner_id: int | None  # the registration to remove, if known
    reason: str


@dataclass(frozen=True)
class CheckIdle:
    gh_job: int
    repo: str
    pool: str
    runner_id: int


Action = RequestRunner | CancelRunner | CheckIdle


def runner_name(prefix: str, gh_job: int, attempt: int) -> str:
    """``{prefix}-{job id}-{try}``: unique per try, so GitHub never sees one name twice."""
    return f"{prefix}-{gh_job}-{attempt}"


class Runners:
    """Every runner record; ``changed()`` hands the shell those to persist."""

    def __init__(self, prefix: str, idle_timeout: float) -> None:
        self.prefix = prefix
        self.idle_timeout = idle_timeout
        self.records: dict[int, Runner] = {}
        self._changed: set[int] = set()

    # -- queries -----------------------------------------------------------------------------

    def by_name(self, name: str) -> Runner | None:
        if not name:
            return None
        return next((r for r in self.records.values() if r.name == name and r.state in _HAS_JOB), None)

    def in_flight(self) -> list[Runner]:
        """Records whose Scalerunner job the shell must watch."""
        return [r for r in self.records.values() if r.state in _HAS_JOB and r.job is not None]

    def changed(self) -> list[Runner]:
        out = [self.records[k] for k in sorted(self._changed) if k in self.records]
        self._changed.clear()
        return out

    def restore(self, record: Runner, at: float) -> None:
        """A record read back after a restart; a request cut short is made again."""
        if record.state is RunnerState.REQUESTED:
            record = self._move(record, RunnerState.WAITING, "coordinator restarted mid-request", at)
            record = msgspec.structs.replace(record, retry_at=at)
        self.records[record.gh_job] = record

    def next_deadline(self) -> float | None:
        times = [r.retry_at for r in self.records.values() if r.state is RunnerState.WAITING]
        times += [r.check_at for r in self.records.values() if r.state is RunnerState.IDLE and r.check_at]
        times += [r.exit_by for r in self.records.values() if r.state is RunnerState.BUSY and r.exit_by]
        return min(times, default=None)

    # -- events ------------------------------------------------------------------------------

    def queued(
        self, gh_job: int, repo: str, pool: str, labels: Iterable[str], at: float, source: str
    ) -> list[Action]:
        """A queued workflow job that a pool takes; a known one changes nothing (idempotent)."""
        if gh_job in self.records:
            return []
        r = Runner(gh_job=gh_job, repo=repo, pool=pool, labels=tuple(labels), since=at)
        r = self._move(r, RunnerState.WAITING, f"queued ({source})", at)
        return self._request(r, at)

    def submitted(self, gh_job: int, name: str, runner_id: int, job: str, at: float) -> list[Action]:
        """The JIT config is made and the Scalerunner job submitted."""
        r = self.records.get(gh_job)
        if r is None or r.state is not RunnerState.REQUESTED or r.name != name:
            return [
                CancelRunner(gh_job, job, r.repo if r else "", r.pool if r else "", runner_id, "not wanted")
            ]
        r = msgspec.structs.replace(r, runner_id=runner_id, job=job, failures=0)
        r = self._move(r, RunnerState.STARTING, f"runner {name} is job {job}", at)
        if r.gh_done or r.taken_by:
            why = "the job completed on GitHub" if r.gh_done else f"runner {r.taken_by} took the job"
            return self._cancel(r, RunnerState.CANCELLED, f"{why} before this runner started", at)
        return []

    def request_failed(self, gh_job: int, why: str, at: float, wait: float = 0.0) -> list[Action]:
        """The JIT request or the submit failed; ``wait``: at least this long before the next
        (a rate limit's reset)."""
        r = self.records.get(gh_job)
        if r is None or r.state is not RunnerState.REQUESTED:
            return []
        r = msgspec.structs.replace(r, failures=r.failures + 1)
        if r.gh_done or r.taken_by:
            self._move(r, RunnerState.DONE, f"request failed ({why}); the job needs no runner now", at)
            return []
        delay = max(min(RETRY_BASE * 2 ** (r.failures - 1), RETRY_CAP), wait)
        r = msgspec.structs.replace(r, retry_at=at + delay)
        self._move(r, RunnerState.WAITING, f"request failed: {why}; next try in {delay:.0f}s", at)
        return []

    def running(self, gh_job: int, at: float) -> list[Action]:
        """Its Scalerunner job runs: the runner is up and waits for GitHub to hand it a job."""
        r = self.records.get(gh_job)
        if r is None or r.state is not RunnerState.STARTING:
            return []
        r = msgspec.structs.replace(r, running_at=at, check_at=at + self.idle_timeout)
        self._move(r, RunnerState.IDLE, "runner job running", at)
        return []

    def ended(self, gh_job: int, job_state: str, at: float) -> list[Action]:
        """Its Scalerunner job is over (``job_state``: succeeded, failed, cancelled, ...)."""
        r = self.records.get(gh_job)
        if r is None or r.state not in _HAS_JOB:
            return []
        if r.state is RunnerState.BUSY:
            self._move(r, RunnerState.DONE, f"runner job {job_state}", at)
            return []
        if r.gh_done or r.taken_by:
            self._move(r, RunnerState.DONE, f"runner job {job_state}; the job was done elsewhere", at)
            return [CancelRunner(r.gh_job, None, r.repo, r.pool, r.runner_id, "runner ended unused")]
        # The runner ended without a job while ours still waits on GitHub: make another.
        actions: list[Action] = [
            CancelRunner(r.gh_job, None, r.repo, r.pool, r.runner_id, "runner ended unused")
        ]
        r = msgspec.structs.replace(r, unused=r.unused + 1)
        why = f"runner job {job_state} before it took a job"
        if r.unused >= MAX_TRIES:
            self._move(r, RunnerState.FAILED, f"{why}; gave up after {r.unused} runners", at)
            return actions
        delay = min(RETRY_BASE * 2 ** (r.unused - 1), RETRY_CAP)
        r = msgspec.structs.replace(r, retry_at=at + delay)
        self._move(r, RunnerState.WAITING, f"{why}; next runner in {delay:.0f}s", at)
        return actions

    def in_progress(self, gh_job: int, runner: str, at: float) -> list[Action]:
        """GitHub handed ``gh_job`` to the runner called ``runner``."""
        ours = self.by_name(runner)
        if ours is not None and ours.state in (RunnerState.STARTING, RunnerState.IDLE):
            self._move(ours, RunnerState.BUSY, f"took workflow job {gh_job}", at)
        r = self.records.get(gh_job)
        if r is None or r.state in TERMINAL:
            return []
        r = self._put(msgspec.structs.replace(r, taken_by=runner))
        if r.state is RunnerState.WAITING:
            self._move(r, RunnerState.DONE, f"taken by runner {runner}", at)
        return []

    def completed(self, gh_job: int, conclusion: str, runner: str, at: float) -> list[Action]:
        """GitHub says ``gh_job`` is over (``conclusion``: success, failure, cancelled, ...)."""
        actions: list[Action] = []
        ours = self.by_name(runner)
        if ours is not None and conclusion == "cancelled":
            actions += self._cancel(
                ours, RunnerState.CANCELLED, f"workflow job {gh_job} cancelled on GitHub", at
            )
        elif ours is not None and ours.state is RunnerState.BUSY:
            self._put(msgspec.structs.replace(ours, exit_by=at + EXIT_GRACE))  # it exits by itself
        r = self.records.get(gh_job)
        if r is None or r.state in TERMINAL:
            return actions
        r = self._put(msgspec.structs.replace(r, gh_done=True, taken_by=r.taken_by or runner))
        why = f"workflow job {gh_job} {conclusion or 'completed'} on GitHub"
        if r.state is RunnerState.WAITING:
            self._move(r, RunnerState.CANCELLED, f"{why} before a runner was made", at)
        elif r.state in (RunnerState.STARTING, RunnerState.IDLE):
            actions += self._cancel(r, RunnerState.CANCELLED, f"{why}; its runner had not taken it", at)
        return actions  # requested: cancelled once submitted; busy: the runner ends by itself

    def idle_checked(self, gh_job: int, busy: bool | None, at: float) -> list[Action]:
        """GitHub's answer to ``CheckIdle`` (None: it could not be asked; ask again later)."""
        r = self.records.get(gh_job)
        if r is None or r.state is not RunnerState.IDLE:
            return []
        if busy:
            self._move(r, RunnerState.BUSY, "GitHub says the runner is busy", at)
            return []
        if busy is None:
            self._put(msgspec.structs.replace(r, check_at=at + IDLE_RECHECK))
            return []
        idle = at - (r.running_at or at)
        return self._cancel(r, RunnerState.IDLE_TIMEOUT, f"no job within {idle:.0f}s", at)

    def tick(self, at: float) -> list[Action]:
        actions: list[Action] = []
        for r in list(self.records.values()):
            if r.state is RunnerState.WAITING and r.retry_at <= at:
                actions += self._request(r, at)
            elif r.state is RunnerState.IDLE and r.check_at is not None and r.check_at <= at:
                self._put(msgspec.structs.replace(r, check_at=None))  # asked once; the answer decides
                if r.runner_id is not None:
                    actions.append(CheckIdle(r.gh_job, r.repo, r.pool, r.runner_id))
            elif r.state is RunnerState.BUSY and r.exit_by is not None and r.exit_by <= at:
                why = f"still running {EXIT_GRACE:.0f}s after its job completed"
                actions += self._cancel(r, RunnerState.DONE, why, at)
        return actions

    def prune(self, before: float) -> list[int]:
        """Forget records over since before ``before``; their ids (for the shell to delete)."""
        gone = [k for k, r in self.records.items() if r.state in TERMINAL and r.since < before]
        for k in gone:
            del self.records[k]
        return gone

    # -- helpers -----------------------------------------------------------------------------

    def _request(self, r: Runner, at: float) -> list[Action]:
        name = runner_name(self.prefix, r.gh_job, r.requests + 1)
        r = msgspec.structs.replace(
            r, requests=r.requests + 1, name=name, runner_id=None, job=None, running_at=None
        )
        self._move(r, RunnerState.REQUESTED, f"requesting runner {name}", at)
        return [RequestRunner(r.gh_job, r.repo, r.pool, r.labels, name)]

    def _cancel(self, r: Runner, state: RunnerState, why: str, at: float) -> list[Action]:
        self._move(r, state, why, at)
        return [CancelRunner(r.gh_job, r.job, r.repo, r.pool, r.runner_id, why)]

    def _move(self, r: Runner, state: RunnerState, reason: str, at: float) -> Runner:
        r = msgspec.structs.replace(
            r, state=state, reason=reason, since=at, history=(*r.history, (at, state.value, reason))[-20:]
        )
        return self._put(r)

    def _put(self, r: Runner) -> Runner:
        self.records[r.gh_job] = r
        self._changed.add(r.gh_job)
        return r
