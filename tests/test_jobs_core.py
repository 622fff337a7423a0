"""The job scheduler core: placement rules, and its invariants under any sequence of events."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from scalerunner.coordinator.jobs.core import (
    ACTIVE,
    TERMINAL,
    AttemptState,
    CancelAttempt,
    Dispatch,
    JobState,
    JobStateError,
    NodeSlot,
    Scheduler,
    SchedulerConfig,
    UnknownJob,
)
from scalerunner.coordinator.jobs.spec import JobSpec

LEASE = 10.0


def spec(**kw: object) -> JobSpec:
    base: dict[str, object] = {"command": ["true"]}
    base.update(kw)
    return JobSpec(**base)  # type: ignore[arg-type]


def node(
    name: str,
    *,
    arch: str = "amd64",
    labels: tuple[str, ...] = (),
    cpus: float = 4,
    mem: int = 4096,
    available: bool = True,
) -> NodeSlot:
    return NodeSlot(name, arch, frozenset(labels), cpus, mem, available)


def dispatches(actions: Sequence[object]) -> list[Dispatch]:
    return [a for a in actions if isinstance(a, Dispatch)]


def test_work_spreads_over_free_nodes_instead_of_piling_on_the_first() -> None:
    s = Scheduler(SchedulerConfig(lease_s=LEASE))
    for i in range(3):
        s.submit(f"j{i}", spec(), 0.0)
    placed = dispatches(s.schedule([node("a"), node("b"), node("c")], 1.0))
    assert sorted(d.node for d in placed) == ["a", "b", "c"]
    # and over time: finished work on "a" does not make "a" the favourite again
    for d in placed:
        s.started(d.job, 1, d.node, 2.0)
        s.finished(d.job, 1, d.node, 3.0, end="exited", exit_code=0)
    s.submit("late", spec(), 4.0)
    s.dispatched["a"] += 5
    assert dispatches(s.schedule([node("a"), node("b")], 5.0))[0].node == "b"


def test_unavailable_wrong_arch_missing_label_or_too_small_nodes_get_nothing() -> None:
    s = Scheduler()
    s.submit("big", spec(cpus=8), 0.0)
    s.submit("arm", spec(arch="arm64"), 0.0)
    s.submit("gpu", spec(labels=["gpu"]), 0.0)
    s.submit("mem", spec(memory=10_000), 0.0)
    nodes = [node("x", available=False, cpus=64, mem=10**6, labels=("gpu",), arch="arm64"), node("y")]
    assert dispatches(s.schedule(nodes, 1.0)) == []
    assert all(j.state is JobState.QUEUED for j in s.jobs.values())


def test_capacity_counts_cpus_and_memory_of_attempts_in_flight() -> None:
    s = Scheduler()
    for i in range(5):
        s.submit(f"j{i}", spec(cpus=2, memory=1000), float(i))
    placed = dispatches(s.schedule([node("a", cpus=4, mem=10_000)], 10.0))
    assert [d.job for d in placed] == ["j0", "j1"]
    assert dispatches(s.schedule([node("a", cpus=4, mem=10_000)], 11.0)) == []


def test_priority_first_then_fair_share_between_projects() -> None:
    s = Scheduler()
    for i in range(3):
        s.submit(f"a{i}", spec(project="alpha"), float(i))
    s.submit("b0", spec(project="beta"), 10.0)
    s.submit("urgent", spec(project="alpha", priority=5), 20.0)
    placed = [d.job for d in dispatches(s.schedule([node("n", cpus=3)], 30.0))]
    assert placed == ["urgent", "b0", "a0"]


def test_a_lost_node_requeues_its_attempt_and_retries_are_bounded() -> None:
    s = Scheduler(SchedulerConfig(lease_s=LEASE))
    s.submit("j", spec(retries=1), 0.0)
    (d,) = dispatches(s.schedule([node("a"), node("b")], 1.0))
    s.started("j", 1, d.node, 2.0)
    s.node_lost(d.node, 3.0, "power-cycled")
    job = s.get("j")
    assert job.state is JobState.QUEUED and job.attempts[0].state is AttemptState.LOST
    assert "power-cycled" in job.reason and "attempt 2" in job.reason
    (d2,) = dispatches(s.schedule([node("a"), node("b")], 4.0))
    assert d2.attempt == 2
    s.tick(4.0 + LEASE)  # never heard from: the lease expires
    job = s.get("j")
    assert job.state is JobState.FAILED and "gave up after 2 attempts" in job.reason


def test_the_jobs_own_failure_is_final_and_keeps_its_exit_code() -> None:
    s = Scheduler()
    s.submit("j", spec(retries=3), 0.0)
    assert dispatches(s.schedule([node("a")], 1.0))
    s.started("j", 1, "a", 2.0)
    s.finished("j", 1, "a", 3.0, end="exited", exit_code=3)
    job = s.get("j")
    assert (job.state, job.exit_code, len(job.attempts)) == (JobState.FAILED, 3, 1)


def test_heartbeats_renew_the_lease_and_the_coordinator_backstops_the_timeout() -> None:
    s = Scheduler(SchedulerConfig(lease_s=LEASE))
    s.submit("j", spec(timeout=25), 0.0)
    s.schedule([node("a")], 0.0)
    for t in range(0, 35, 5):
        s.started("j", 1, "a", float(t))
        assert s.tick(float(t)) == []
    actions = s.tick(35.0)  # 25 s timeout + 10 s lease after it started at 0
    (cancel,) = actions
    assert isinstance(cancel, CancelAttempt) and (cancel.job, cancel.node) == ("j", "a")
    assert "timed out" in cancel.reason
    assert s.get("j").state is JobState.TIMED_OUT


def test_cancel_works_in_every_state_and_not_after_the_end() -> None:
    s = Scheduler(SchedulerConfig(lease_s=LEASE))
    s.submit("q", spec(), 0.0)
    assert s.cancel("q", 1.0) == [] and s.get("q").state is JobState.CANCELLED
    s.submit("r", spec(), 0.0)
    s.schedule([node("a")], 1.0)
    s.started("r", 1, "a", 2.0)
    (c,) = s.cancel("r", 3.0, "not needed")
    assert (c.node, c.attempt) == ("a", 1)
    assert s.get("r").state is JobState.RUNNING  # until the node says it stopped
    assert s.started("r", 1, "a", 4.0)  # a heartbeat after the cancel: told again
    s.finished("r", 1, "a", 5.0, end="cancelled", exit_code=137)
    assert s.get("r").state is JobState.CANCELLED
    with pytest.raises(JobStateError, match="job r is cancelled"):
        s.cancel("r", 6.0)
    with pytest.raises(UnknownJob):
        s.cancel("nope", 6.0)


def test_a_status_from_an_attempt_the_coordinator_does_not_run_is_answered_with_cancel() -> None:
    s = Scheduler()
    s.submit("j", spec(), 0.0)
    s.schedule([node("a")], 0.0)
    s.node_lost("a", 1.0, "gone")
    assert s.started("j", 1, "a", 2.0) == [CancelAttempt("j", 1, "a", "not the attempt the coordinator runs")]
    assert s.get("j").state is JobState.QUEUED


# -- the invariants, under any sequence of events ----------------------------------------------

NODES = ["n1", "n2", "n3"]
CAP = {"n1": (2.0, 2048), "n2": (4.0, 4096), "n3": (1.0, 1024)}
ARCH = {"n1": "amd64", "n2": "amd64", "n3": "arm64"}
LABELS = {"n1": frozenset({"kvm"}), "n2": frozenset(), "n3": frozenset({"kvm"})}

specs = st.builds(
    spec,
    cpus=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    memory=st.sampled_from([256, 1024, 2048]),
    arch=st.sampled_from([None, "amd64", "arm64"]),
    labels=st.sampled_from([[], ["kvm"]]),
    retries=st.integers(0, 2),
    priority=st.integers(-1, 1),
    project=st.sampled_from(["p", "q"]),
    timeout=st.sampled_from([5.0, 50.0]),
)


class SchedulerMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.s = Scheduler(SchedulerConfig(lease_s=LEASE))
        self.now = 0.0
        self.n = 0
        self.available = dict.fromkeys(NODES, True)
        self.connected = dict.fromkeys(NODES, True)  # health aside: health checks may run

    def slots(self) -> list[NodeSlot]:
        return [
            NodeSlot(
                n, ARCH[n], LABELS[n], *CAP[n], self.available[n] and self.connected[n], self.connected[n]
            )
            for n in NODES
        ]

    def pick(self, data: st.DataObject, active: bool) -> tuple[str, int, str] | None:
        jobs = [j for j in self.s.jobs.values() if (j.active is not None) == active and j.attempts]
        if not jobs:
            return None
        job = data.draw(st.sampled_from(sorted(jobs, key=lambda j: j.id)))
        a = job.attempts[-1]
        return job.id, a.number, a.node

    @rule(sp=specs)
    def submit(self, sp: JobSpec) -> None:
        self.n += 1
        self.s.submit(f"j{self.n}", sp, self.now)

    @rule(node=st.sampled_from(NODES), up=st.booleans(), connected=st.booleans())
    def set_available(self, node: str, up: bool, connected: bool) -> None:
        self.available[node] = up  # its health is good
        self.connected[node] = connected

    @rule(node=st.sampled_from(NODES))
    def submit_health_check(self, node: str) -> None:
        self.n += 1
        self.s.submit(f"j{self.n}", spec(retries=0), self.now, pin=node, check=True)

    @rule()
    def schedule(self) -> None:
        for action in self.s.schedule(self.slots(), self.now):
            assert isinstance(action, Dispatch)
            job = self.s.get(action.job)
            assert self.connected[action.node], "work given to a node whose agent is away"
            if job.check:
                assert action.node == job.pin, "a health check ran on another node"
            else:
                assert self.available[action.node], "work given to a node whose health is not good"

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        picked = self.pick(data, active=True)
        if picked:
            self.s.started(*picked, self.now)

    @rule(
        data=st.data(),
        end=st.sampled_from(["exited", "timeout", "killed", "cancelled", "fault"]),
        code=st.integers(0, 2),
    )
    def finish(self, data: st.DataObject, end: str, code: int) -> None:
        picked = self.pick(data, active=True)
        if picked:
            self.s.finished(*picked, self.now, end=end, exit_code=code)  # type: ignore[arg-type]

    @rule(data=st.data())
    def stale_status(self, data: st.DataObject) -> None:
        picked = self.pick(data, active=False)
        if picked:
            before = self.s.get(picked[0])
            self.s.started(*picked, self.now)
            self.s.finished(*picked, self.now, end="exited", exit_code=0)
            assert self.s.get(picked[0]) == before, "a stale attempt changed its job"

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        live = sorted(j.id for j in self.s.jobs.values() if j.state not in TERMINAL)
        if live:
            self.s.cancel(data.draw(st.sampled_from(live)), self.now)

    @rule(node=st.sampled_from(NODES))
    def lose_node(self, node: str) -> None:
        self.available[node] = False
        self.connected[node] = False
        self.s.node_lost(node, self.now, "test")

    @rule(data=st.data())
    def dispatch_fails(self, data: st.DataObject) -> None:
        picked = self.pick(data, active=True)
        if picked:
            self.s.dispatch_failed(*picked, self.now, "no answer")

    @rule(dt=st.sampled_from([0.5, 3.0, LEASE, 30.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.s.tick(self.now)

    @invariant()
    def one_attempt_in_flight_at_most_numbered_in_order(self) -> None:
        for job in self.s.jobs.values():
            assert [a.number for a in job.attempts] == list(range(1, len(job.attempts) + 1))
            assert all(a.state not in ACTIVE for a in job.attempts[:-1]), job.id
            assert job.lost_attempts <= job.spec.retries + 1

    @invariant()
    def never_over_capacity(self) -> None:
        cpus: Counter[str] = Counter()
        mem: Counter[str] = Counter()
        for job in self.s.jobs.values():
            if (a := job.active) is not None:
                cpus[a.node] += job.spec.cpus  # type: ignore[assignment]
                mem[a.node] += job.spec.memory
        for n in NODES:
            assert cpus[n] <= CAP[n][0] + 1e-9 and mem[n] <= CAP[n][1], n

    @invariant()
    def every_job_is_queued_in_flight_or_over(self) -> None:
        for job in self.s.jobs.values():
            in_flight = job.state in (JobState.STARTING, JobState.RUNNING)
            assert in_flight == (job.active is not None), (job.id, job.state)
            assert job.state in TERMINAL or job.state is JobState.QUEUED or in_flight
            if job.state is JobState.SUCCEEDED:
                assert job.attempts[-1].state is AttemptState.SUCCEEDED

    def teardown(self) -> None:
        # Liveness: with every node back and time passing, each job that fits somewhere ends.
        if not hasattr(self, "s"):
            return
        self.available = dict.fromkeys(NODES, True)
        self.connected = dict.fromkeys(NODES, True)
        for _ in range(60):
            self.now += LEASE
            self.s.tick(self.now)
            self.s.schedule(self.slots(), self.now)
        for job in self.s.jobs.values():
            fits = any(
                (job.spec.arch in (None, ARCH[n]))
                and set(job.spec.labels) <= LABELS[n]
                and job.spec.cpus <= CAP[n][0]
                and job.spec.memory <= CAP[n][1]
                for n in NODES
            )
            assert job.state in TERMINAL or not fits, (job.id, job.state, job.reason)


SchedulerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_scheduler_invariants = SchedulerMachine.TestCase


def test_a_health_check_runs_only_on_its_node_even_before_the_node_is_good() -> None:
    s = Scheduler()
    s.submit("work", spec(), 0.0)
    s.submit("check", spec(), 0.0, pin="b", check=True)
    unproven = [
        NodeSlot("a", "amd64", frozenset(), 4, 4096, available=False, connected=True),
        NodeSlot("b", "amd64", frozenset(), 4, 4096, available=False, connected=True),
    ]
    placed = dispatches(s.schedule(unproven, 1.0))
    assert [(d.job, d.node) for d in placed] == [("check", "b")]  # ordinary work waits for good health
    assert s.get("work").state is JobState.QUEUED
