"""The node lifecycle and health state machines: each rule of docs/lifecycle.md, the conn_seq race
as a property, and a stateful exploration that checks the machine's invariants after every event."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from scalerunner.coordinator import lifecycle as lc
from scalerunner.coordinator.errors import NodeStateError
from scalerunner.coordinator.health import Health, after_check, after_fault, may_recover
from scalerunner.coordinator.lifecycle import (
    CONNECTED,
    Action,
    AgentState,
    BootRequested,
    Drain,
    Event,
    HealthCheckResult,
    LifecycleConfig,
    LinkDown,
    LinkUp,
    NodeLifecycle,
    NodeRecord,
    OperatorReset,
    PowerCycle,
    PowerOff,
    PowerOn,
    Reboot,
    RequeueJobs,
    RunHealthCheck,
    SetHealth,
    SwitchPower,
    Telemetry,
    Tick,
    Transition,
    Undrain,
    can_accept_work,
    new_node,
    next_deadline,
    step,
    work_refusal,
)
from scalerunner.protocol.mqtt import payloads

S = NodeLifecycle
CFG = LifecycleConfig()
DOC = (Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md").read_text()

# --- helpers ---------------------------------------------------------------------------------------


class Run:
    """A node driven through events; keeps every transition and action for the assertions."""

    def __init__(self, node: NodeRecord, config: LifecycleConfig = CFG) -> None:
        self.node = node
        self.config = config
        self.transitions: list[Transition] = []
        self.actions: list[Action] = []

    def __call__(self, event: Event) -> tuple[list[Transition], list[Action]]:
        self.node, transitions, actions = step(self.node, event, self.config)
        self.transitions += transitions
        self.actions += actions
        return transitions, actions

    def states(self, transitions: list[Transition]) -> list[tuple[str, str]]:
        return [(t.old, t.new) for t in transitions if t.axis == "state"]

    def tick_to_deadline(self) -> tuple[list[Transition], list[Action]]:
        due = next_deadline(self.node, self.config)
        assert due is not None, f"no deadline in state {self.node.state}"
        return self(Tick(at=due))


def online(at: float, seq: int = 1, slots: int = 1) -> AgentState:
    return AgentState(at=at, status="online", conn_seq=seq, slots=slots)


def will(at: float, seq: int = 1) -> AgentState:
    return AgentState(at=at, status="offline", conn_seq=seq)


def idle_node(health: Health = Health.GOOD, *, slots: int = 1, config: LifecycleConfig = CFG) -> Run:
    """n1 powered on at 0, agent online at 20 (conn_seq 1), first telemetry at 21: idle."""
    run = Run(new_node("n1", health=health, reason="test"), config)
    run(PowerOn(at=0))
    run(online(20, slots=slots))
    run(Telemetry(at=21))
    assert run.node.state is S.IDLE
    return run


def busy_node(jobs: tuple[str, ...] = ("j1", "j2"), **kw: Any) -> Run:
    run = idle_node(**kw)
    run(Telemetry(at=22, jobs=jobs))
    assert run.node.state is S.BUSY
    return run


# --- power, boot, online, telemetry ----------------------------------------------------------------


def test_power_on_switches_power_and_boots() -> None:
    run = Run(new_node("n1"))
    transitions, actions = run(PowerOn(at=5, reason="scheduler wants capacity"))
    assert actions == [SwitchPower("n1", True, "scheduler wants capacity")]
    assert transitions == [
        Transition("n1", "state", "off", "booting", "powered on: scheduler wants capacity", 5)
    ]
    assert run.node.powered and run.node.since == 5


def test_power_on_of_a_powered_node_does_nothing() -> None:
    run = idle_node()
    assert run(PowerOn(at=30)) == ([], [])


def test_boot_request_of_an_off_node_means_it_was_powered_outside_the_coordinator() -> None:
    run = Run(new_node("n1"))
    transitions, actions = run(BootRequested(at=3))
    assert run.states(transitions) == [("off", "booting")]
    assert "outside the coordinator" in transitions[0].reason
    assert actions == [] and run.node.powered


def test_agent_online_then_telemetry_drives_online_idle_busy_idle() -> None:
    run = Run(new_node("n1", health=Health.GOOD, reason="test"))
    run(PowerOn(at=0))
    t, _ = run(online(20, seq=7))
    assert run.states(t) == [("booting", "online")] and "conn_seq 7" in t[0].reason
    t, _ = run(Telemetry(at=21))
    assert run.states(t) == [("online", "idle")] and t[0].reason == "first telemetry: no jobs running"
    t, _ = run(Telemetry(at=22, jobs=("build-1",)))
    assert run.states(t) == [("idle", "busy")] and t[0].reason == "telemetry: running 1 job (build-1)"
    assert run(Telemetry(at=23, jobs=("build-1",))) == ([], [])
    t, _ = run(Telemetry(at=24))
    assert run.states(t) == [("busy", "idle")]


def test_telemetry_is_ignored_unless_the_agent_is_connected() -> None:
    run = Run(new_node("n1"))
    run(PowerOn(at=0))
    assert run(Telemetry(at=1, jobs=("j",))) == ([], [])
    assert run.node.state is S.BOOTING and run.node.jobs == () and run.node.last_telemetry_at is None


def test_silence_of_an_idle_undrained_node_is_a_fault_and_starts_recovery() -> None:
    run = idle_node()
    assert next_deadline(run.node, CFG) == 21 + 30
    assert run(Tick(at=50)) == ([], [])  # before the deadline: nothing
    t, actions = run(Tick(at=51.5))
    assert run.states(t) == [("idle", "offline")]
    assert t[0].reason == "infrastructure fault: no telemetry for 30.5 s while not drained"
    assert t[1].reason.endswith("recovery power-cycle 1 of 3 in 10 s")
    assert actions == [] and run.node.health is Health.UNKNOWN and run.node.recovery_at == 61.5
    t, actions = run.tick_to_deadline()
    assert [type(a) for a in actions] == [PowerCycle] and run.states(t) == [("offline", "booting")]


def test_silence_of_a_drained_idle_node_only_takes_it_offline() -> None:
    run = idle_node()
    run(Drain(at=22, reason="maintenance"))
    t, actions = run(Tick(at=52))
    assert run.states(t) == [("draining", "offline")] and t[0].reason == "no telemetry for 31 s"
    assert actions == [] and run.node.health is Health.GOOD  # the operator expects it to go
    assert next_deadline(run.node, CFG) is None


def test_an_agent_that_never_sends_telemetry_is_recovered() -> None:
    run = Run(new_node("n1", health=Health.GOOD, reason="test"))
    run(PowerOn(at=0))
    run(online(10))
    t, _ = run(Tick(at=40))
    assert run.states(t) == [("online", "offline")]
    assert t[0].reason == "infrastructure fault: online for 30 s without sending telemetry while not drained"
    assert t[-1].reason.endswith("recovery power-cycle 1 of 3 in 10 s")


def test_an_idle_agent_that_goes_away_is_recovered_once_per_outage() -> None:
    run = idle_node()
    t, actions = run(will(30))
    assert run.states(t) == [("idle", "offline")] and actions == []  # maybe a restart: wait
    assert next_deadline(run.node, CFG) == 21 + 30
    t, actions = run.tick_to_deadline()
    assert [x.axis for x in t] == ["health"] and "since its agent went offline" in t[0].reason
    assert run.node.lost and run.node.recovery_at is not None
    assert run.node.state_reason.endswith("recovery power-cycle 1 of 3 in 10 s")
    run(online(60, seq=2))  # back before the cycle: recovery cancelled, the outage is over
    assert run.node.state is S.ONLINE and not run.node.lost and run.node.recovery_at is None


def test_an_agent_that_comes_back_within_the_timeout_is_not_recovered() -> None:
    run = idle_node()
    run(will(30))
    run(online(40, seq=2))
    run(Telemetry(at=41))
    t, actions = run(Tick(at=60))
    assert t == [] and actions == [] and run.node.state is S.IDLE


def test_a_drained_agent_that_goes_away_stays_offline() -> None:
    run = idle_node()
    run(Drain(at=22, reason="kernel update"))
    run(will(30))
    assert run.node.state is S.OFFLINE and next_deadline(run.node, CFG) is None


# --- recovery: back-off, failure, latch ------------------------------------------------------------


def test_a_node_silent_while_busy_loses_its_jobs_and_is_power_cycled_with_backoff_until_failed() -> None:
    run = busy_node(("j1", "j2"))
    t, actions = run(Tick(at=52))
    assert actions == [RequeueJobs("n1", ("j1", "j2"), "no telemetry for 30 s while running 2 jobs (j1, j2)")]
    assert [(x.axis, x.old, x.new) for x in t] == [
        ("health", "good", "unknown"),
        ("state", "busy", "offline"),
    ]
    assert t[0].reason.startswith("infrastructure fault: no telemetry for 30 s")
    assert t[1].reason.endswith("recovery power-cycle 1 of 3 in 10 s")
    assert run.node.jobs == ()

    waits = []
    for attempt in (1, 2, 3):
        before = run.node.since
        t, actions = run.tick_to_deadline()  # the back-off is over: cycle now
        waits.append(t[0].at - before)
        [cycle] = actions
        assert isinstance(cycle, PowerCycle) and (cycle.node, cycle.attempt) == ("n1", attempt)
        assert cycle.reason.startswith(f"recovery power-cycle {attempt} of 3: ")
        assert run.states(t) == [("offline", "booting")]
        assert t[0].reason == f"recovery power-cycle {attempt} of 3"
        t, actions = run.tick_to_deadline()  # it never comes online
        assert t[0].reason.startswith("did not come online within 180 s of power-on")
        assert actions == []
    assert waits == [10, 20, 40]
    assert run.states(t) == [("booting", "failed")]
    assert t[0].reason.endswith("gave up after 3 recovery power-cycles")
    assert run.node.failure == t[0].reason and next_deadline(run.node, CFG) is None


def test_backoff_doubles_per_attempt_and_is_capped() -> None:
    config = LifecycleConfig(backoff_base=100, backoff_cap=300)
    assert [config.backoff(k) for k in range(5)] == [100, 200, 300, 300, 300]
    assert LifecycleConfig().backoff(1000) == 300


def test_a_node_that_does_not_come_online_after_power_on_is_recovered() -> None:
    run = Run(new_node("n1", health=Health.GOOD, reason="test"))
    run(PowerOn(at=0))
    assert next_deadline(run.node, CFG) == 180
    t, actions = run(Tick(at=180))
    assert actions == []
    assert [(x.axis, x.new) for x in t] == [("health", "unknown"), ("state", "offline")]
    assert run.node.recovery_at == 190 and run.node.recoveries == 1


def test_with_no_recoveries_allowed_a_failed_boot_fails_at_once() -> None:
    config = LifecycleConfig(max_recoveries=0)
    run = Run(new_node("n1"), config)
    run(PowerOn(at=0))
    t, actions = run(Tick(at=180))
    assert run.states(t) == [("booting", "failed")] and actions == []


def failed_node() -> Run:
    run = Run(new_node("n1"), LifecycleConfig(max_recoveries=0))
    run(PowerOn(at=0))
    run(Tick(at=180))
    assert run.node.state is S.FAILED
    return run


def test_failed_is_latched_against_every_fact() -> None:
    run = failed_node()
    for event in (
        BootRequested(at=200),
        online(201, seq=4),
        Telemetry(at=202, jobs=("j",)),
        Tick(at=10_000),
        HealthCheckResult(at=10_001, passed=True),
        Undrain(at=10_002),
    ):
        transitions, actions = run(event)
        assert run.node.state is S.FAILED, event
        assert [x for x in transitions if x.axis == "state"] == [] and actions == []
    assert run.node.conn_seq == 4 and run.node.conn_online  # the facts are kept for the reset


def test_operator_calls_on_a_failed_node_fail_loudly_naming_the_state() -> None:
    run = failed_node()
    for event, message in (
        (PowerOn(at=300), "node n1 is failed, cannot be powered on until an operator resets it"),
        (Reboot(at=300), "node n1 is failed, cannot be power-cycled until an operator resets it"),
        (Drain(at=300), "node n1 is failed, cannot drain"),
    ):
        with pytest.raises(NodeStateError, match=re.escape(message)) as info:
            run(event)
        assert info.value.node == "n1" and info.value.state == "failed"


def test_power_off_of_a_failed_node_cuts_power_and_it_stays_failed() -> None:
    run = failed_node()
    t, actions = run(PowerOff(at=300, reason="inspect"))
    assert actions == [SwitchPower("n1", False, "inspect")] and t == []
    assert run.node.state is S.FAILED and not run.node.powered


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ([], "offline"),  # powered, never heard from
        ([PowerOff(at=250)], "off"),
        ([online(250, seq=9)], "online"),
        ([online(250, seq=9), will(251, seq=9)], "offline"),
    ],
)
def test_operator_reset_leaves_failed_for_the_state_the_facts_call_for(
    facts: list[Event], expected: str
) -> None:
    run = failed_node()
    for fact in facts:
        run(fact)
    t, _ = run(OperatorReset(at=300, reason="reseated the SD card", by="alice"))
    assert run.states(t) == [("failed", expected)]
    assert t[0].reason == "reset by alice: reseated the SD card"
    assert run.node.failure is None and run.node.recoveries == 0


def test_reset_of_a_node_that_has_not_failed_fails_loudly() -> None:
    with pytest.raises(NodeStateError, match="node n1 is idle, cannot be reset"):
        idle_node()(OperatorReset(at=30))


def test_a_node_back_online_during_the_backoff_is_not_power_cycled() -> None:
    run = busy_node()
    run(Tick(at=52))
    assert run.node.recovery_at == 62
    t, actions = run(online(55, seq=2))
    assert run.states(t) == [("offline", "online")] and "recovery power-cycle cancelled" in t[0].reason
    assert [type(a) for a in actions] == [RunHealthCheck]
    run(Telemetry(at=56))
    assert run(Tick(at=62)) == ([], []) and run.node.state is S.IDLE


def test_after_a_fault_a_passing_health_check_makes_the_node_good_and_forgets_the_recoveries() -> None:
    run = busy_node()
    run(Tick(at=52))
    run.tick_to_deadline()  # power-cycle 1
    _, actions = run(online(70, seq=2))
    assert actions == [RunHealthCheck("n1", run.node.health_reason)]
    run(Telemetry(at=71))
    assert run.node.state is S.IDLE
    assert not can_accept_work(run.node)
    transitions, _ = run(HealthCheckResult(at=80, passed=True, log_ref="hc/17"))
    assert [(x.axis, x.new, x.reason) for x in transitions] == [
        ("health", "good", "health check passed (log hc/17)")
    ]
    assert run.node.recoveries == 0 and can_accept_work(run.node)


def test_the_agent_going_offline_while_busy_gets_the_telemetry_timeout_as_grace() -> None:
    run = busy_node(("j1",))
    t, actions = run(will(25))
    assert run.states(t) == [("busy", "offline")] and actions == []
    assert run.node.jobs == ("j1",) and next_deadline(run.node, CFG) == 22 + 30
    # back in time: nothing is lost
    back = Run(run.node)
    back(online(40, seq=2))
    back(Telemetry(at=41, jobs=("j1",)))
    assert back.node.state is S.BUSY and back.actions == []
    # not back: the jobs are re-queued and the node recovered
    t, actions = run(Tick(at=52))
    assert actions == [RequeueJobs("n1", ("j1",), "silent for 30 s while running 1 job (j1)")]
    assert run.node.health is Health.UNKNOWN and run.node.recovery_at == 62


def test_a_node_that_reboots_while_busy_loses_its_jobs() -> None:
    run = busy_node(("j1",))
    t, actions = run(BootRequested(at=30))
    assert actions == [RequeueJobs("n1", ("j1",), "node rebooted while running 1 job (j1)")]
    assert [(x.axis, x.new) for x in t] == [("health", "unknown"), ("state", "booting")]


def test_an_operator_reboot_power_cycles_requeues_and_is_not_a_recovery() -> None:
    run = busy_node(("j1",))
    t, actions = run(Reboot(at=30, reason="kernel update"))
    assert actions == [
        RequeueJobs("n1", ("j1",), "power-cycled: kernel update"),
        PowerCycle("n1", 0, "kernel update"),
    ]
    assert run.states(t) == [("busy", "booting")] and run.node.health is Health.GOOD
    assert run.node.recoveries == 0 and next_deadline(run.node, CFG) == 30 + 180


def test_power_off_of_a_busy_node_requeues_its_jobs() -> None:
    run = busy_node(("j1",))
    t, actions = run(PowerOff(at=30, reason="rack move"))
    assert actions == [
        RequeueJobs("n1", ("j1",), "powered off: rack move"),
        SwitchPower("n1", False, "rack move"),
    ]
    assert run.states(t) == [("busy", "off")] and not run.node.powered
    assert run(PowerOff(at=31)) == ([], [])


def test_power_on_of_an_offline_node_is_refused_in_favour_of_a_reboot() -> None:
    run = idle_node()
    run(will(30))
    with pytest.raises(NodeStateError, match=r"node n1 is offline, cannot be powered on: .* reboot it"):
        run(PowerOn(at=31))


# --- conn_seq ordering -----------------------------------------------------------------------------


def test_a_will_from_an_older_connection_after_a_reconnect_is_ignored() -> None:
    run = idle_node()
    run(online(30, seq=2))  # reconnected before the old Will arrived
    assert run(will(31, seq=1)) == ([], [])
    assert run.node.state is S.IDLE and run.node.conn_seq == 2


def test_an_offline_will_with_the_held_conn_seq_takes_the_node_offline() -> None:
    run = idle_node()
    t, _ = run(will(30, seq=1))
    assert run.states(t) == [("idle", "offline")]
    assert run(online(31, seq=1)) == ([], [])  # that connection is dead: its online is stale
    assert run.node.state is S.OFFLINE


def test_a_repeated_online_state_changes_nothing() -> None:
    run = idle_node()
    before = run.node
    assert run(online(30, seq=1)) == ([], []) and run.node == before


def test_an_older_online_state_is_ignored_entirely() -> None:
    run = idle_node()
    run(will(30, seq=1))
    run(online(31, seq=3))
    run(will(32, seq=3))
    before = run.node
    assert run(online(33, seq=2)) == ([], []) and run.node == before


@st.composite
def connection_histories(draw: st.DrawFn) -> tuple[list[AgentState], int, bool]:
    """Several connections (increasing conn_seq, possibly with gaps), each with its online state
    and maybe its Will, some messages lost, delivered in any interleaving."""
    seqs = sorted(draw(st.sets(st.integers(0, 2**40), min_size=1, max_size=5)))
    messages = []
    for seq in seqs:
        if draw(st.booleans()):
            messages.append(AgentState(at=0, status="online", conn_seq=seq))
        if draw(st.booleans()):
            messages.append(AgentState(at=0, status="offline", conn_seq=seq))
    if not messages:
        messages.append(AgentState(at=0, status="online", conn_seq=seqs[0]))
    delivered = draw(st.permutations(messages))
    newest = max(m.conn_seq for m in delivered)
    dead = any(m.conn_seq == newest and m.status == "offline" for m in delivered)
    return (
        [AgentState(at=float(i), status=m.status, conn_seq=m.conn_seq) for i, m in enumerate(delivered)],
        newest,
        not dead,
    )


@given(connection_histories(), st.sampled_from(["booting", "offline", "idle"]))
def test_any_interleaving_of_state_messages_leaves_the_node_as_its_newest_connection_says(
    history: tuple[list[AgentState], int, bool], start: str
) -> None:
    messages, newest, alive = history
    run = Run(new_node("n1", health=Health.GOOD, reason="test"))
    run(PowerOn(at=0))
    if start != "booting":  # an earlier connection, older than every generated one
        run(AgentState(at=0, status="online", conn_seq=0))
        run(Telemetry(at=0))
        if start == "offline":
            run(AgentState(at=0, status="offline", conn_seq=0))
        messages = [AgentState(at=m.at, status=m.status, conn_seq=m.conn_seq + 1) for m in messages]
        newest += 1
    for message in messages:
        run(message)
    assert run.node.conn_seq == newest
    assert run.node.conn_online == alive
    if alive:
        assert run.node.state in CONNECTED
    else:  # still booting if no online state was ever taken, else offline
        assert run.node.state in ((S.BOOTING, S.OFFLINE) if start == "booting" else (S.OFFLINE,))


# --- drain -----------------------------------------------------------------------------------------


def test_a_draining_node_finishes_its_jobs_takes_no_new_ones_and_undrain_returns_it() -> None:
    run = busy_node(("j1",))
    t, _ = run(Drain(at=30, reason="firmware update"))
    assert run.states(t) == [("busy", "draining")] and t[0].reason == "drained: firmware update"
    refusal = work_refusal(run.node)
    assert refusal is not None and str(refusal) == "node n1 is draining, cannot accept job"
    assert run(Telemetry(at=31)) == ([], [])  # its jobs finished: still draining
    assert run(Drain(at=32)) == ([], [])  # already draining
    t, _ = run(Undrain(at=33, reason="done"))
    assert run.states(t) == [("draining", "idle")] and t[0].reason == "undrained: done"
    assert can_accept_work(run.node)
    assert run(Undrain(at=34)) == ([], [])


def test_a_drain_outlives_a_reconnect() -> None:
    run = idle_node()
    run(Drain(at=30))
    run(will(31))
    t, _ = run(online(32, seq=2))
    assert run.states(t) == [("offline", "draining")]
    run(Undrain(at=33))
    assert run.node.state is S.ONLINE  # no telemetry yet on this connection


def test_draining_a_node_whose_agent_is_not_connected_fails_loudly() -> None:
    run = Run(new_node("n1"))
    run(PowerOn(at=0))
    with pytest.raises(NodeStateError, match="node n1 is booting, cannot drain: its agent is not connected"):
        run(Drain(at=1))


# --- health ----------------------------------------------------------------------------------------


def test_health_rules() -> None:
    assert after_fault(Health.GOOD) is Health.UNKNOWN
    for h in (Health.UNKNOWN, Health.BAD, Health.MAINTENANCE, Health.RETIRED):
        assert after_fault(h) is h
    assert after_check(Health.UNKNOWN, True) is Health.GOOD
    assert after_check(Health.UNKNOWN, False) is Health.BAD
    assert after_check(Health.GOOD, False) is Health.BAD
    for h in (Health.BAD, Health.MAINTENANCE, Health.RETIRED):
        assert after_check(h, True) is h and after_check(h, False) is h


def test_a_new_node_gets_one_health_check_when_its_agent_connects() -> None:
    run = Run(new_node("n1"))
    run(PowerOn(at=0))
    _, actions = run(online(10))
    assert actions == [RunHealthCheck("n1", "no health check has run yet")]
    assert run(Telemetry(at=11))[1] == []  # not asked twice
    run(will(12))
    _, actions = run(online(13, seq=2))
    assert [type(a) for a in actions] == [RunHealthCheck]  # the first was lost with its connection


def test_a_failed_health_check_makes_the_node_bad_until_an_operator_acts() -> None:
    run = idle_node(Health.UNKNOWN)
    t, _ = run(HealthCheckResult(at=30, passed=False, log_ref="hc/3"))
    assert [(x.axis, x.old, x.new, x.reason) for x in t] == [
        ("health", "unknown", "bad", "health check failed (log hc/3)")
    ]
    assert run(HealthCheckResult(at=31, passed=True)) == ([], [])
    assert run.node.health is Health.BAD
    t, _ = run(SetHealth(at=32, health=Health.GOOD, reason="replaced the fan", by="bob"))
    assert t[0].reason == "set by bob: replaced the fan" and can_accept_work(run.node)


def test_operator_setting_unknown_asks_for_a_new_check() -> None:
    run = idle_node()
    _, actions = run(SetHealth(at=30, health=Health.UNKNOWN, reason="odd dmesg"))
    assert actions == [RunHealthCheck("n1", "set by operator: odd dmesg")]


def test_a_health_change_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="n1: a health change needs a reason"):
        idle_node()(SetHealth(at=30, health=Health.MAINTENANCE, reason="  "))


def test_a_retired_node_is_never_powered_on_nor_recovered() -> None:
    run = busy_node(("j1",))
    run(SetHealth(at=25, health=Health.RETIRED, reason="end of life", by="carol"))
    t, actions = run(Tick(at=52))
    assert actions == [RequeueJobs("n1", ("j1",), "no telemetry for 30 s while running 1 job (j1)")]
    assert run.states(t) == [("busy", "offline")]
    assert t[0].reason.endswith("not recovered: health is retired")
    assert next_deadline(run.node, CFG) is None
    with pytest.raises(NodeStateError, match="node n1 is retired, cannot be powered on"):
        run(PowerOn(at=60))
    with pytest.raises(NodeStateError, match="node n2 is retired, cannot be powered on"):
        Run(new_node("n2", health=Health.RETIRED, reason="gone"))(PowerOn(at=0))
    with pytest.raises(NodeStateError, match="node n1 is retired, cannot be power-cycled"):
        run(Reboot(at=60))


def test_retiring_or_maintaining_a_node_cancels_its_pending_recovery() -> None:
    for health in (Health.RETIRED, Health.MAINTENANCE):
        run = busy_node()
        run(Tick(at=52))
        assert run.node.recovery_at is not None
        run(SetHealth(at=53, health=health, reason="x"))
        assert run.node.recovery_at is None and "recovery cancelled" in run.node.state_reason
        assert run(Tick(at=1000)) == ([], [])


def test_a_node_in_maintenance_that_fails_to_boot_is_left_alone() -> None:
    run = Run(new_node("n1", health=Health.MAINTENANCE, reason="bench"))
    run(PowerOn(at=0))
    t, actions = run(Tick(at=180))
    assert actions == [] and run.states(t) == [("booting", "offline")]
    assert run.node.health is Health.MAINTENANCE


# --- accepting work --------------------------------------------------------------------------------


def test_work_refusals_name_the_node_and_what_stands_in_the_way() -> None:
    run = Run(new_node("n1", health=Health.GOOD, reason="test"))
    run(PowerOn(at=0))
    assert str(work_refusal(run.node)) == "node n1 is booting, cannot accept job"
    run(online(10, slots=2))
    assert str(work_refusal(run.node)) == "node n1 is online, cannot accept job"  # no telemetry yet
    run(Telemetry(at=11, jobs=("j1",)))
    assert can_accept_work(run.node)
    assert str(work_refusal(run.node, reserved=1)) == (
        "node n1 is busy, cannot accept job: all 2 job slots are in use"
    )
    run(SetHealth(at=12, health=Health.MAINTENANCE, reason="swap PSU", by="dan"))
    refusal = work_refusal(run.node)
    assert isinstance(refusal, NodeStateError) and refusal.state == "busy"
    assert str(refusal) == "node n1 is busy, cannot accept job: health is maintenance (set by dan: swap PSU)"


# --- plumbing --------------------------------------------------------------------------------------


def test_events_are_built_from_the_mqtt_payloads() -> None:
    state = payloads.NodeState(
        node="n1", status="online", conn_seq=5, capacity=payloads.Capacity(cpus=4, memory_mb=1, slots=3)
    )
    assert AgentState.from_payload(state, 9.0) == AgentState(at=9.0, status="online", conn_seq=5, slots=3)
    bare = payloads.NodeState(node="n1", status="offline", conn_seq=5)
    assert AgentState.from_payload(bare, 1.0).slots == 1
    tele = payloads.Telemetry(
        node="n1",
        ts=1,
        load1=0,
        cpu_pct=0,
        mem_used_mb=0,
        mem_total_mb=1,
        jobs=[payloads.JobSummary(job="a")],
    )
    assert Telemetry.from_payload(tele, 2.0) == Telemetry(at=2.0, jobs=("a",))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"boot_timeout": 0}, "boot_timeout"),
        ({"telemetry_timeout": -1}, "telemetry_timeout"),
        ({"backoff_base": 10, "backoff_cap": 5}, "backoff_cap"),
        ({"max_recoveries": -1}, "max_recoveries"),
    ],
)
def test_config_refuses_values_that_would_stall_or_spin(changes: dict[str, float], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        LifecycleConfig(**changes)  # type: ignore[arg-type]


def test_docs_describe_every_state_health_event_and_action() -> None:
    section = DOC.split("## Node lifecycle and health", 1)[1]
    for name in [s.value for s in NodeLifecycle] + [h.value for h in Health]:
        assert f"`{name}`" in section, name
    for cls in (*get_args(Event), *get_args(Action)):
        assert f"`{cls.__name__}" in section, cls.__name__
    for key in ("boot_timeout", "telemetry_timeout", "backoff_base", "backoff_cap", "max_recoveries"):
        assert f"`{key}`" in section, key


# --- the coordinator's own MQTT link ---------------------------------------------------------------


def test_a_broker_outage_longer_than_the_timeout_marks_no_node_offline() -> None:
    run = busy_node()
    assert run(LinkDown(at=25)) == ([], [])
    assert next_deadline(run.node, CFG) is None  # the ticker has nothing to decide while deaf
    assert run(Tick(at=25 + 10 * CFG.telemetry_timeout)) == ([], [])
    assert run.node.state is S.BUSY and run.node.jobs == ("j1", "j2")
    assert run(LinkUp(at=400)) == ([], [])
    assert next_deadline(run.node, CFG) == 400 + CFG.telemetry_timeout  # the grace
    assert run(Tick(at=400 + CFG.telemetry_timeout - 1)) == ([], [])
    run(Telemetry(at=410, jobs=("j1", "j2")))  # heard again within the grace: nothing happened
    assert run.node.state is S.BUSY and run.transitions[-1].at < 25


def test_a_node_not_heard_within_the_grace_after_the_link_is_back_goes_offline_saying_so() -> None:
    run = idle_node()
    run(LinkDown(at=25))
    run(LinkUp(at=300))
    transitions, actions = run.tick_to_deadline()
    assert run.states(transitions) == [("idle", "offline")] and actions == []
    assert transitions[0].at == 300 + CFG.telemetry_timeout
    assert "not heard within 30 s of the coordinator's reconnect" in transitions[0].reason


def test_each_reconnect_gives_a_grace_counted_from_it() -> None:
    run = idle_node()  # last heard at 21: its own deadline is 51
    run(LinkDown(at=22))
    run(LinkUp(at=23))  # a blip: the grace (53) ends after the node's own deadline, so it wins
    assert next_deadline(run.node, CFG) == 23 + CFG.telemetry_timeout
    run(LinkDown(at=200))
    run(LinkUp(at=201))
    assert next_deadline(run.node, CFG) == 201 + CFG.telemetry_timeout


def test_no_boot_timeout_and_no_recovery_power_cycle_fire_while_the_link_is_down() -> None:
    booting = Run(new_node("n1", health=Health.GOOD, reason="test"))
    booting(PowerOn(at=0))
    booting(LinkDown(at=1))
    assert booting(Tick(at=CFG.boot_timeout + 100)) == ([], [])
    booting(LinkUp(at=CFG.boot_timeout + 100))
    assert next_deadline(booting.node, CFG) == CFG.boot_timeout + 100 + CFG.telemetry_timeout
    booting(online(CFG.boot_timeout + 110))  # its agent reconnected within the grace
    assert booting.node.state is S.ONLINE and not booting.actions[1:]

    lost = busy_node()
    lost.tick_to_deadline()  # silent while busy: offline, recovery due after the back-off
    assert lost.node.recovery_at is not None
    due = lost.node.recovery_at
    lost(LinkDown(at=due - 1))
    assert lost(Tick(at=due + 100)) == ([], [])
    lost(LinkUp(at=due + 100))
    transitions, _ = lost(online(due + 101, seq=2))
    assert lost.states(transitions) == [("offline", "online")]
    assert not any(isinstance(a, PowerCycle) for a in lost.actions)


def test_a_will_that_arrives_while_the_link_is_up_again_still_acts_at_once() -> None:
    run = idle_node()
    run(LinkDown(at=25))
    run(LinkUp(at=30))
    transitions, _ = run(will(31))
    assert run.states(transitions) == [("idle", "offline")]


# --- the stateful exploration ----------------------------------------------------------------------

SMALL = LifecycleConfig(boot_timeout=20, telemetry_timeout=5, backoff_base=2, backoff_cap=6, max_recoveries=2)
OPERATOR = (PowerOn, PowerOff, Reboot, Drain, Undrain, SetHealth, OperatorReset)


class LifecycleMachine(RuleBasedStateMachine):
    """Random events in random order, with a clock that only moves forward; every step is checked
    against the machine's promises."""

    def __init__(self) -> None:
        super().__init__()
        self.node = new_node("n1", health=Health.GOOD, reason="test")
        self.now = 0.0
        self.seq = 0

    @initialize(health=st.sampled_from(list(Health)))
    def start(self, health: Health) -> None:
        self.node = new_node("n1", health=health, reason="test")

    def apply(self, event: Event) -> None:
        old = self.node
        try:
            new, transitions, actions = step(old, event, SMALL)
        except NodeStateError as exc:
            assert isinstance(event, OPERATOR), f"a fact must never be refused: {event}"
            assert exc.node == "n1" and exc.state in {*S, *Health}
            return
        self.check_step(old, event, new, transitions, actions)
        self.node = new

    def check_step(
        self,
        old: NodeRecord,
        event: Event,
        new: NodeRecord,
        transitions: list[Transition],
        actions: list[Action],
    ) -> None:
        # state and transitions agree; no transition without a reason
        for axis, before, after in (("state", old.state, new.state), ("health", old.health, new.health)):
            chain = [t for t in transitions if t.axis == axis]
            position = before.value
            for t in chain:
                assert t.old == position and t.new != t.old
                position = t.new
            assert position == after.value, (axis, chain)
        for t in transitions:
            assert t.node == "n1" and t.at == event.at and t.reason.strip()
        if new.state is not old.state:
            last = [t for t in transitions if t.axis == "state"][-1]
            assert new.since == event.at and new.state_reason == last.reason
        if new.health is not old.health:
            assert new.health_since == event.at
        # failed is latched
        if old.state is S.FAILED and not isinstance(event, OperatorReset):
            assert new.state is S.FAILED
        # a retired node is never powered on nor power-cycled
        if Health.RETIRED in (old.health, new.health):
            assert not any(
                isinstance(a, PowerCycle) or (isinstance(a, SwitchPower) and a.on) for a in actions
            )
        # conn_seq only grows, and a stale state message changes nothing
        if old.conn_seq is not None:
            assert new.conn_seq is not None and new.conn_seq >= old.conn_seq
            if isinstance(event, AgentState) and event.conn_seq < old.conn_seq:
                assert new == old and transitions == [] and actions == []
        # power-cycles lead to booting, re-queues name the jobs that were there
        for a in actions:
            if isinstance(a, PowerCycle):
                assert new.state is S.BOOTING and a.attempt <= SMALL.max_recoveries
            if isinstance(a, RequeueJobs):
                assert a.jobs and a.jobs == old.jobs and new.jobs == ()
        # the link events are no news about the node; while deaf, ticks decide nothing; and after
        # the link is back, nothing is judged by silence before the grace is over
        if isinstance(event, LinkDown | LinkUp):
            assert transitions == [] and actions == []
        if isinstance(event, Tick) and old.link_down:
            assert new == old and transitions == [] and actions == []
        grace = None if old.link_up_at is None else old.link_up_at + SMALL.telemetry_timeout
        if isinstance(event, Tick) and grace is not None and event.at < grace:
            assert transitions == [] and actions == [], (old, event)
        # a tick at a deadline always moves the deadline on: the shell never spins
        if isinstance(event, Tick):
            due = next_deadline(new, SMALL)
            assert due is None or due > event.at

    def advance(self, dt: float) -> float:
        self.now += dt
        return self.now

    @rule(dt=st.floats(0, 8))
    def tick(self, dt: float) -> None:
        self.apply(Tick(at=self.advance(dt)))

    @precondition(lambda self: next_deadline(self.node, SMALL) is not None)
    @rule()
    def tick_at_deadline(self) -> None:
        due = next_deadline(self.node, SMALL)
        assert due is not None
        self.now = max(self.now, due)
        self.apply(Tick(at=self.now))

    @rule()
    def power_on(self) -> None:
        self.apply(PowerOn(at=self.advance(0.5)))

    @rule()
    def power_off(self) -> None:
        self.apply(PowerOff(at=self.advance(0.5)))

    @rule()
    def reboot(self) -> None:
        self.apply(Reboot(at=self.advance(0.5)))

    @rule()
    def boot_requested(self) -> None:
        self.apply(BootRequested(at=self.advance(0.5)))

    @rule(status=st.sampled_from(["online", "offline"]), delta=st.integers(-2, 2), slots=st.integers(0, 3))
    def agent_state(self, status: Literal["online", "offline"], delta: int, slots: int) -> None:
        seq = max(0, self.seq + delta)
        self.seq = max(self.seq, seq)
        self.apply(AgentState(at=self.advance(0.5), status=status, conn_seq=seq, slots=slots))

    @rule(jobs=st.lists(st.sampled_from(["j1", "j2", "j3"]), max_size=3, unique=True))
    def telemetry(self, jobs: list[str]) -> None:
        self.apply(Telemetry(at=self.advance(1), jobs=tuple(jobs)))

    @rule()
    def drain(self) -> None:
        self.apply(Drain(at=self.advance(0.5)))

    @rule()
    def undrain(self) -> None:
        self.apply(Undrain(at=self.advance(0.5)))

    @rule(health=st.sampled_from(list(Health)))
    def set_health(self, health: Health) -> None:
        self.apply(SetHealth(at=self.advance(0.5), health=health, reason="test"))

    @rule(passed=st.booleans())
    def check_result(self, passed: bool) -> None:
        self.apply(HealthCheckResult(at=self.advance(0.5), passed=passed))

    @rule()
    def reset(self) -> None:
        self.apply(OperatorReset(at=self.advance(0.5)))

    @rule(dt=st.floats(0, 8))
    def link_down(self, dt: float) -> None:
        self.apply(LinkDown(at=self.advance(dt)))

    @rule(dt=st.floats(0, 8))
    def link_up(self, dt: float) -> None:
        self.apply(LinkUp(at=self.advance(dt)))

    @invariant()
    def record_is_consistent(self) -> None:
        n = self.node
        assert (n.failure is not None) == (n.state is S.FAILED)
        assert (n.boot_started_at is not None) == (n.state is S.BOOTING)
        assert n.state is not S.OFF or not n.powered
        assert n.state not in (S.BOOTING, S.OFFLINE, *CONNECTED) or n.powered
        assert n.recovery_at is None or (n.state is S.OFFLINE and may_recover(n.health))
        assert not n.check_pending or n.state in CONNECTED
        assert n.recoveries <= SMALL.max_recoveries
        if n.health is Health.UNKNOWN and n.state in CONNECTED:
            assert n.check_pending
        if n.state in CONNECTED:
            assert n.conn_online
        if n.link_down:
            assert next_deadline(n, SMALL) is None
        assert (n.state is S.DRAINING) == (n.drain_reason is not None and n.state in CONNECTED)

    @invariant()
    def work_only_on_a_good_idle_or_busy_node(self) -> None:
        if can_accept_work(self.node):
            assert self.node.health is Health.GOOD
            assert self.node.state in (S.IDLE, S.BUSY) and self.node.drain_reason is None
            assert len(self.node.jobs) < self.node.slots


LifecycleMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_lifecycle_machine = LifecycleMachine.TestCase


def test_module_exports_what_it_documents() -> None:
    assert set(lc.__all__) <= set(dir(lc))


def test_a_node_nothing_can_power_cycle_gets_its_fault_recorded_but_no_recovery() -> None:
    run = Run(replace(new_node("n1", health=Health.GOOD, reason="test"), power_control=False))
    run(PowerOn(at=0))
    run(online(10))
    run(Telemetry(at=11))
    t, actions = run(Tick(at=41))
    assert [(x.axis, x.new) for x in t] == [("health", "unknown"), ("state", "offline")]
    assert t[1].reason.endswith("not recovered: nothing can power-cycle it") and actions == []
    assert run.node.recovery_at is None and next_deadline(run.node, CFG) is None
