"""The runner state machine (coordinator/github/runners.py): scenarios, then a hypothesis state
machine that drives it with webhooks, reconciler passes, request outcomes, job ends and the clock
in any order, and checks that no GitHub job ever has two runners at once."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scalerunner.coordinator.github.runners import (
    ACTIVE,
    EXIT_GRACE,
    MAX_TRIES,
    TERMINAL,
    Action,
    CancelRunner,
    CheckIdle,
    RequestRunner,
    Runners,
    RunnerState,
)

IDLE = 60.0


def core() -> Runners:
    return Runners("lab", IDLE)


def only(actions: list[Action], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]


def test_a_queued_job_asks_for_one_runner_named_after_it_and_a_second_sighting_asks_nothing() -> None:
    r = core()
    (req,) = r.queued(7, "acme/w", "pool", ["self-hosted"], 0.0, "webhook")
    assert isinstance(req, RequestRunner) and req.name == "lab-7-1" and req.labels == ("self-hosted",)
    assert r.queued(7, "acme/w", "pool", ["self-hosted"], 1.0, "reconciler") == []
    assert r.records[7].state is RunnerState.REQUESTED


def test_a_failed_request_backs_off_and_is_made_again_under_a_new_name() -> None:
    r = core()
    r.queued(7, "acme/w", "pool", [], 0.0, "webhook")
    assert r.request_failed(7, "HTTP 503", 0.0) == []
    assert r.records[7].state is RunnerState.WAITING and r.records[7].retry_at == 5.0
    assert r.tick(4.9) == []
    (req,) = r.tick(5.0)
    assert isinstance(req, RequestRunner) and req.name == "lab-7-2"
    r.request_failed(7, "HTTP 503", 5.0)
    assert r.records[7].retry_at == 15.0, "doubled"
    for _ in range(20):  # GitHub down for long: never given up, capped back-off
        r.tick(r.records[7].retry_at)
        r.request_failed(7, "down", r.records[7].retry_at)
    assert r.records[7].state is RunnerState.WAITING
    assert r.records[7].retry_at - r.records[7].since == 300.0


def test_a_rate_limit_waits_for_its_reset() -> None:
    r = core()
    r.queued(7, "acme/w", "pool", [], 0.0, "webhook")
    r.request_failed(7, "rate limited", 0.0, wait=1800.0)
    assert r.records[7].retry_at == 1800.0 and r.tick(1799.0) == []


def test_the_runner_runs_takes_the_job_and_ends_done() -> None:
    r = core()
    r.queued(7, "acme/w", "pool", [], 0.0, "webhook")
    assert r.submitted(7, "lab-7-1", 99, "j-1", 1.0) == []
    r.running(7, 2.0)
    assert r.records[7].state is RunnerState.IDLE
    r.in_progress(7, "lab-7-1", 3.0)
    assert r.records[7].state is RunnerState.BUSY
    assert r.completed(7, "success", "lab-7-1", 4.0) == [], "the runner exits by itself"
    assert r.ended(7, "succeeded", 5.0) == []
    assert r.records[7].state is RunnerState.DONE


def test_a_runner_made_for_one_job_may_take_another_and_is_busy_with_it() -> None:
    r = core()
    r.queued(1, "acme/w", "pool", [], 0.0, "webhook")
    r.queued(2, "acme/w", "pool", [], 0.0, "webhook")
    r.submitted(1, "lab-1-1", 11, "j-1", 1.0)
    r.submitted(2, "lab-2-1", 12, "j-2", 1.0)
    r.running(1, 2.0)
    r.in_progress(2, "lab-1-1", 3.0)  # GitHub handed job 2 to the runner of job 1
    assert r.records[1].state is RunnerState.BUSY
    assert r.records[2].state is RunnerState.STARTING and r.records[2].taken_by == "lab-1-1"
    # job 2 is cancelled on GitHub: the runner running it (job 1's) is ended, and so is job 2's own
    actions = r.completed(2, "cancelled", "lab-1-1", 4.0)
    assert {a.job for a in only(actions, CancelRunner)} == {"j-1", "j-2"}  # type: ignore[attr-defined]


def test_a_runner_still_running_long_after_its_job_completed_is_ended() -> None:
    r = core()
    r.queued(7, "acme/w", "pool", [], 0.0, "webhook")
    r.submitted(7, "lab-7-1", 99, "j-1", 1.0)
    r.in_progress(7, "lab-7-1", 2.0)
    r.completed(7, "success", "lab-7-1", 3.0)
    assert r.next_deadline() == 3.0 + EXIT_GRACE
    assert r.tick(3.0 + EXIT_GRACE - 1) == []
    (cancel,) = r.tick(3.0 + EXIT_GRACE)
    assert isinstance(cancel, CancelRunner) and cancel.job == "j-1"
    assert r.records[7].state is RunnerState.DONE


def test_a_job_completed_before_its_runner_was_made_cancels_the_runner_once_it_exists() -> None:
    r = core()
    r.queued(7, "acme/w", "pool", [], 0.0, "webhook")
    assert r.completed(7, "cancelled", "", 0.5) == []
    (cancel,) = r.submitted(7, "lab-7-1", 99, "j-1", 1.0)
    assert isinstance(cancel, CancelRunner) and cancel.job == "j-1" and cancel.runner_id == 99
    assert r.records[7].state is RunnerState.CANCELLED


def test_an_idle_runner_is_checked_with_github_then_ended_or_kept() -> None:
    r = core()
    r.queued(7, "acme/w", "pool", [], 0.0, "webhook")
    r.submitted(7, "lab-7-1", 99, "j-1", 1.0)
    r.running(7, 10.0)
    assert r.tick(10.0 + IDLE - 1) == []
    (check,) = r.tick(10.0 + IDLE)
    assert isinstance(check, CheckIdle) and check.runner_id == 99
    assert r.tick(10.0 + IDLE + 1) == [], "asked once"
    assert r.idle_checked(7, None, 71.0) == [], "GitHub could not say: ask again later"
    assert only(r.tick(71.0 + 30), CheckIdle)
    (cancel,) = r.idle_checked(7, False, 102.0)
    assert isinstance(cancel, CancelRunner) and cancel.runner_id == 99 and cancel.job == "j-1"
    assert r.records[7].state is RunnerState.IDLE_TIMEOUT


def test_a_busy_answer_keeps_an_idle_runner_whose_webhook_was_lost() -> None:
    r = core()
    r.queued(7, "acme/w", "pool", [], 0.0, "webhook")
    r.submitted(7, "lab-7-1", 99, "j-1", 1.0)
    r.running(7, 1.0)
    r.tick(1.0 + IDLE)
    assert r.idle_checked(7, True, 62.0) == []
    assert r.records[7].state is RunnerState.BUSY


def test_a_runner_that_ends_unused_is_replaced_a_bounded_number_of_times() -> None:
    r = core()
    r.queued(7, "acme/w", "pool", [], 0.0, "webhook")
    t = 0.0
    for n in range(1, MAX_TRIES + 1):
        r.submitted(7, f"lab-7-{n}", 100 + n, f"j-{n}", t)
        actions = r.ended(7, "failed", t + 1)
        assert only(actions, CancelRunner), "its registration is removed"
        t = r.records[7].retry_at
        if n < MAX_TRIES:
            assert r.records[7].state is RunnerState.WAITING
            (req,) = r.tick(t)
            assert isinstance(req, RequestRunner) and req.name == f"lab-7-{n + 1}"
    assert r.records[7].state is RunnerState.FAILED
    assert r.queued(7, "acme/w", "pool", [], t + 100, "reconciler") == []


def test_restore_makes_a_request_cut_short_again() -> None:
    r = core()
    r.queued(7, "acme/w", "pool", [], 0.0, "webhook")
    record = r.records[7]
    again = core()
    again.restore(record, 50.0)
    (req,) = again.tick(50.0)
    assert isinstance(req, RequestRunner) and req.name == "lab-7-2"


def test_prune_forgets_only_old_finished_records() -> None:
    r = core()
    r.queued(1, "acme/w", "pool", [], 0.0, "webhook")
    r.queued(2, "acme/w", "pool", [], 0.0, "webhook")
    r.request_failed(1, "down", 0.5)
    r.completed(1, "success", "elsewhere", 1.0)
    assert r.records[1].state is RunnerState.CANCELLED
    assert r.prune(2.0) == [1] and set(r.records) == {2}


GH_JOBS = st.integers(1, 4)


class RunnersMachine(RuleBasedStateMachine):
    """Any order of events; the model keeps the runners that exist (requested or with a job
    not yet ended) per GitHub job."""

    def __init__(self) -> None:
        super().__init__()
        self.r = Runners("lab", IDLE)
        self.now = 0.0
        self.live: dict[int, set[str]] = {}  # gh job -> runner names that may exist now
        self.pending: dict[str, int] = {}  # runner name -> gh job, requested, no outcome yet
        self.jobs: dict[str, tuple[int, str]] = {}  # runner name -> (gh job, Scalerunner job)
        self.names: set[str] = set()
        self.cancelled_jobs: set[str] = set()
        self.ended_jobs: set[str] = set()

    def apply(self, actions: list[Action], terminal_before: set[int]) -> list[Action]:
        for a in actions:
            if isinstance(a, RequestRunner):
                assert a.gh_job not in terminal_before, "a finished record asked for a runner"
                assert a.name not in self.names, "a runner name used twice"
                self.names.add(a.name)
                self.pending[a.name] = a.gh_job
                self.live.setdefault(a.gh_job, set()).add(a.name)
            elif isinstance(a, CancelRunner) and a.job is not None:
                self.cancelled_jobs.add(a.job)
        return actions

    def terminal(self) -> set[int]:
        return {k for k, v in self.r.records.items() if v.state in TERMINAL}

    @rule(gh=GH_JOBS, source=st.sampled_from(["webhook", "reconciler"]))
    def queued(self, gh: int, source: str) -> None:
        self.apply(self.r.queued(gh, "acme/w", "pool", ["x"], self.now, source), self.terminal())

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), ok=st.booleans())
    def request_outcome(self, data: st.DataObject, ok: bool) -> None:
        name = data.draw(st.sampled_from(sorted(self.pending)))
        gh = self.pending.pop(name)
        before = self.terminal()
        if ok:
            job = f"j-{name}"
            self.jobs[name] = (gh, job)
            self.apply(self.r.submitted(gh, name, hash(name) % 10_000, job, self.now), before)
        else:
            self.live[gh].discard(name)
            self.apply(self.r.request_failed(gh, "down", self.now), before)

    @precondition(lambda self: any(j not in self.ended_jobs for _, j in self.jobs.values()))
    @rule(data=st.data())
    def job_runs(self, data: st.DataObject) -> None:
        name = data.draw(
            st.sampled_from(sorted(n for n, (_, j) in self.jobs.items() if j not in self.ended_jobs))
        )
        gh, _ = self.jobs[name]
        if self.r.records[gh].name == name:
            self.apply(self.r.running(gh, self.now), self.terminal())

    @precondition(lambda self: any(j not in self.ended_jobs for _, j in self.jobs.values()))
    @rule(data=st.data(), state=st.sampled_from(["succeeded", "failed", "cancelled", "timed_out"]))
    def job_ends(self, data: st.DataObject, state: str) -> None:
        name = data.draw(
            st.sampled_from(sorted(n for n, (_, j) in self.jobs.items() if j not in self.ended_jobs))
        )
        gh, job = self.jobs[name]
        self.ended_jobs.add(job)
        self.live[gh].discard(name)
        if self.r.records[gh].name == name:
            self.apply(self.r.ended(gh, state, self.now), self.terminal())

    @rule(gh=GH_JOBS, data=st.data())
    def in_progress(self, gh: int, data: st.DataObject) -> None:
        runner = data.draw(st.sampled_from([*sorted(self.names), "someone-else"]))
        self.apply(self.r.in_progress(gh, runner, self.now), self.terminal())

    @rule(gh=GH_JOBS, data=st.data(), conclusion=st.sampled_from(["success", "failure", "cancelled"]))
    def completed(self, gh: int, data: st.DataObject, conclusion: str) -> None:
        runner = data.draw(st.sampled_from([*sorted(self.names), "someone-else", ""]))
        ours = self.r.by_name(runner)
        actions = self.apply(self.r.completed(gh, conclusion, runner, self.now), self.terminal())
        if conclusion == "cancelled" and ours is not None and ours.job is not None:
            assert any(isinstance(a, CancelRunner) and a.job == ours.job for a in actions), (
                "the runner of a job cancelled on GitHub is ended"
            )

    @rule(gh=GH_JOBS, busy=st.sampled_from([True, False, None]))
    def idle_answer(self, gh: int, busy: bool | None) -> None:
        self.apply(self.r.idle_checked(gh, busy, self.now), self.terminal())

    @rule(dt=st.floats(0, 400))
    def tick(self, dt: float) -> None:
        self.now += dt
        idle_due = {
            k
            for k, v in self.r.records.items()
            if v.state is RunnerState.IDLE and v.check_at and v.check_at <= self.now
        }
        actions = self.apply(self.r.tick(self.now), self.terminal())
        checked = {a.gh_job for a in actions if isinstance(a, CheckIdle)}
        assert checked == idle_due, "every runner idle past its time is checked, once"

    @invariant()
    def never_two_runners_for_one_github_job(self) -> None:
        for gh, names in self.live.items():
            assert len(names) <= 1, f"github job {gh} has runners {names}"

    @invariant()
    def an_active_record_has_its_runner_in_the_model(self) -> None:
        for gh, rec in self.r.records.items():
            if rec.state in ACTIVE:
                assert rec.name in self.live.get(gh, set())

    @invariant()
    def a_deadline_is_offered_for_every_timed_wait(self) -> None:
        waiting = [v.retry_at for v in self.r.records.values() if v.state is RunnerState.WAITING]
        if waiting:
            deadline = self.r.next_deadline()
            assert deadline is not None and deadline <= min(waiting)


TestRunnersMachine = RunnersMachine.TestCase
TestRunnersMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
