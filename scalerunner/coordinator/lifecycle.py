"""The node lifecycle state machine: pure, no I/O, driven by events and a clock passed in.

One function decides everything: ``step(node, event, config)`` returns the node's new record,
the transitions it went through (each with its reason) and the actions the shell must carry out
(switch power, power-cycle, re-queue jobs, run a health check). ``next_deadline`` tells the
shell when to send the next ``Tick``. docs/lifecycle.md describes the rules for operators.

States (``NodeLifecycle``)::

    off -> booting -> online -> idle <-> busy        (draining: an operator's drain, while up)
                         \\__________________________-> offline -> booting (recovery) ... -> failed

- ``online``: the agent announced itself, no telemetry yet on this connection.
- ``idle``/``busy``: telemetry says no jobs / some jobs.
- ``draining``: takes no new work, finishes what it has; the drain outlives a reconnect.
- ``offline``: powered but not heard from (agent's Will, telemetry silence, failed boot).
- ``failed``: recovery gave up. Latched: nothing but ``OperatorReset`` leaves it.

Health (``health.Health``) is the second axis; see ``health.py``.

Which messages count: state comes only from the retained state topic, ordered by the agent's
``conn_seq`` (a state older than the held one is ignored; for the held seq, offline is final).
Telemetry only refreshes a node whose agent is connected; it carries no ``conn_seq``, so a late
telemetry message from a dead connection must not revive a node.

Silence is judged only while the coordinator can hear: ``LinkDown`` (its own MQTT connection
is lost) holds every deadline that ``Tick`` acts on, and ``LinkUp`` gives each node
``telemetry_timeout`` seconds from the reconnect to be heard again before silence counts, so a
broker outage never marks every node offline (nor power-cycles the ones that were booting).

Operator events in the wrong state raise ``NodeStateError`` naming the node and its state, and
change nothing. Observed facts (boot requests, agent state, telemetry, ticks, check results)
never raise: the machine records them or, where they cannot apply, ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal, assert_never

from ..protocol.mqtt import payloads
from .errors import NodeStateError
from .health import Health, after_check, after_fault, may_power_on, may_recover, may_take_work

__all__ = [
    "CONNECTED",
    "Action",
    "AgentState",
    "BootRequested",
    "Drain",
    "Event",
    "HealthCheckResult",
    "LifecycleConfig",
    "LinkDown",
    "LinkUp",
    "NodeLifecycle",
    "NodeRecord",
    "OperatorReset",
    "PowerCycle",
    "PowerOff",
    "PowerOn",
    "Reboot",
    "RequeueJobs",
    "RunHealthCheck",
    "SetHealth",
    "SwitchPower",
    "Telemetry",
    "Tick",
    "Transition",
    "Undrain",
    "can_accept_work",
    "new_node",
    "next_deadline",
    "step",
    "work_refusal",
]


class NodeLifecycle(StrEnum):
    OFF = "off"
    BOOTING = "booting"
    ONLINE = "online"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    OFFLINE = "offline"
    FAILED = "failed"


CONNECTED = frozenset({NodeLifecycle.ONLINE, NodeLifecycle.IDLE, NodeLifecycle.BUSY, NodeLifecycle.DRAINING})
"""The states in which the node's agent is connected."""


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    """Timeouts in seconds. Recovery attempt k (0-based) waits ``backoff(k)`` before its
    power-cycle; after ``max_recoveries`` attempts the node is marked failed."""

    boot_timeout: float = 180.0
    telemetry_timeout: float = 30.0
    backoff_base: float = 10.0
    backoff_cap: float = 300.0
    max_recoveries: int = 3

    def __post_init__(self) -> None:
        for key in ("boot_timeout", "telemetry_timeout", "backoff_base", "backoff_cap"):
            if not getattr(self, key) > 0:
                raise ValueError(f"lifecycle {key} must be > 0, not {getattr(self, key)!r}")
        if self.backoff_cap < self.backoff_base:
            raise ValueError(f"lifecycle backoff_cap {self.backoff_cap} is below backoff_base")
        if self.max_recoveries < 0:
            raise ValueError(f"lifecycle max_recoveries must be >= 0, not {self.max_recoveries}")

    def backoff(self, attempt: int) -> float:
        """The wait before recovery power-cycle ``attempt`` (0-based): base * 2**attempt, capped."""
        return min(self.backoff_cap, self.backoff_base * float(2 ** min(attempt, 64)))


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    """Everything the lifecycle knows about one node. Immutable: ``step`` returns a new one.

    ``conn_seq``/``conn_online`` are the newest agent connection and whether it is alive,
    tracked in every state (also while failed). ``reported``: telemetry arrived on the current
    connection. ``jobs``: the jobs the last telemetry named (kept while offline, until they are
    re-queued). ``drain_reason``: the operator's drain, kept across reconnects until undrained.
    ``boot_started_at``: when power was applied for the current boot (booting only).
    ``recovery_at``: when the next recovery power-cycle is due (offline only). ``recoveries``:
    recovery power-cycles ordered since the node last proved good. ``failure``: why it failed
    (the latched first failure; set exactly while failed). ``check_pending``: a health check
    was asked for on the current connection and has not answered. ``link_down``: the
    coordinator's MQTT connection is down, so nothing is judged by silence; ``link_up_at``: when it
    last came back (silence counts from then at the earliest). ``lost``: this outage of the node was
    already judged an infrastructure fault (so a silent, un-drained node is recovered once per
    outage, not on every tick); cleared when its agent comes online again. ``power_control``:
    something can switch the node's power (a switch port or a BMC in the inventory); without it a
    fault is recorded but no recovery power-cycle is ordered (it could not be carried out).
    """

    name: str
    state: NodeLifecycle = NodeLifecycle.OFF
    state_reason: str = "added to the inventory"
    since: float = 0.0
    health: Health = Health.UNKNOWN
    health_reason: str = "no health check has run yet"
    health_since: float = 0.0
    powered: bool = False
    conn_seq: int | None = None
    conn_online: bool = False
    online_at: float | None = None
    last_telemetry_at: float | None = None
    reported: bool = False
    jobs: tuple[str, ...] = ()
    slots: int = 1
    drain_reason: str | None = None
    boot_started_at: float | None = None
    recovery_at: float | None = None
    recoveries: int = 0
    failure: str | None = None
    check_pending: bool = False
    link_down: bool = False
    link_up_at: float | None = None
    lost: bool = False
    power_control: bool = True


def new_node(
    name: str,
    at: float = 0.0,
    *,
    health: Health = Health.UNKNOWN,
    reason: str = "added to the inventory",
) -> NodeRecord:
    """A node as the inventory first knows it: off, health unknown (a check must pass first)."""
    return NodeRecord(
        name=name,
        since=at,
        state_reason=reason,
        health=health,
        health_since=at,
        health_reason=reason if health is not Health.UNKNOWN else "no health check has run yet",
    )


# -- events: what happened (facts) or what an operator/scheduler asks for ----------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerOn:
    """Asks to power the node on. Only from off; already powered is a no-op."""

    at: float
    reason: str = "operator request"


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerOff:
    """Asks to cut the node's power (always allowed; a failed node stays failed)."""

    at: float
    reason: str = "operator request"


@dataclass(frozen=True, slots=True, kw_only=True)
class Reboot:
    """Asks for an operator power-cycle (not counted as a recovery)."""

    at: float
    reason: str = "operator request"


@dataclass(frozen=True, slots=True, kw_only=True)
class BootRequested:
    """The node's firmware asked the PXE server for its boot script."""

    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentState:
    """A message on nodes/{node}/state: the agent's online state or its Will (offline)."""

    at: float
    status: Literal["online", "offline"]
    conn_seq: int
    slots: int = 1

    @classmethod
    def from_payload(cls, state: payloads.NodeState, at: float) -> AgentState:
        slots = state.capacity.slots if state.capacity is not None else 1
        return cls(at=at, status=state.status, conn_seq=state.conn_seq, slots=slots)


@dataclass(frozen=True, slots=True, kw_only=True)
class Telemetry:
    """A telemetry message arrived at ``at`` (coordinator clock); ``jobs`` are those running."""

    at: float
    jobs: tuple[str, ...] = ()

    @classmethod
    def from_payload(cls, telemetry: payloads.Telemetry, at: float) -> Telemetry:
        return cls(at=at, jobs=tuple(j.job for j in telemetry.jobs))


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """The clock: ``at`` is now. Send one at ``next_deadline``; early ticks change nothing."""

    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDown:
    """The coordinator lost its MQTT connection: it cannot hear any node until ``LinkUp``."""

    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkUp:
    """The coordinator's MQTT connection is back (subscribed again)."""

    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Drain:
    at: float
    reason: str = "operator request"


@dataclass(frozen=True, slots=True, kw_only=True)
class Undrain:
    at: float
    reason: str = "operator request"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetHealth:
    """An operator sets the node's health; ``reason`` must not be empty."""

    at: float
    health: Health
    reason: str
    by: str = "operator"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheckResult:
    at: float
    passed: bool
    log_ref: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorReset:
    """An operator clears a failed node's latch (only a failed node can be reset)."""

    at: float
    reason: str = "operator reset"
    by: str = "operator"


Event = (
    PowerOn
    | PowerOff
    | Reboot
    | BootRequested
    | AgentState
    | Telemetry
    | Tick
    | LinkDown
    | LinkUp
    | Drain
    | Undrain
    | SetHealth
    | HealthCheckResult
    | OperatorReset
)


# -- outputs: what changed, and what the shell must do ------------------------------------------


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded change on one axis; ``old``/``new`` are the enum values."""

    node: str
    axis: Literal["state", "health"]
    old: str
    new: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class SwitchPower:
    """Switch the node's power on or off now (PoE port or BMC)."""

    node: str
    on: bool
    reason: str


@dataclass(frozen=True, slots=True)
class PowerCycle:
    """Power-cycle the node now. ``attempt`` is the recovery attempt (1-based); 0 means an
    operator's reboot. The back-off was already waited: the core sends this when it is due."""

    node: str
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class RequeueJobs:
    """These jobs are lost on this node: put them back in the queue."""

    node: str
    jobs: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class RunHealthCheck:
    """Run a health check on the (connected) node and report it as ``HealthCheckResult``."""

    node: str
    reason: str


Action = SwitchPower | PowerCycle | RequeueJobs | RunHealthCheck


# -- the decision -----------------------------------------------------------------------------


def step(
    node: NodeRecord, event: Event, config: LifecycleConfig
) -> tuple[NodeRecord, list[Transition], list[Action]]:
    """Apply one event: the new record, the transitions (in order) and the actions to take.

    Raises ``NodeStateError`` (and changes nothing) for an operator event the node's state
    forbids, ``ValueError`` for a health change without a reason.
    """
    s = _Step(node, event.at)
    match event:
        case PowerOn():
            _power_on(s, event)
        case PowerOff():
            _power_off(s, event)
        case Reboot():
            _reboot(s, event)
        case BootRequested():
            _boot_requested(s)
        case AgentState():
            _agent_state(s, event)
        case Telemetry():
            _telemetry(s, event)
        case Tick():
            _tick(s, config)
        case LinkDown():
            s.update(link_down=True)
        case LinkUp():
            s.update(link_down=False, link_up_at=s.at)
        case Drain():
            _drain(s, event)
        case Undrain():
            _undrain(s, event)
        case SetHealth():
            _set_health(s, event)
        case HealthCheckResult():
            _check_result(s, event)
        case OperatorReset():
            _reset(s, event)
        case _:
            assert_never(event)
    _ask_for_health_check(s)
    return s.node, s.transitions, s.actions


def next_deadline(node: NodeRecord, config: LifecycleConfig) -> float | None:
    """When the next ``Tick`` can change this node (None: only another event can)."""
    if node.link_down:
        return None  # deaf: nothing is decided by silence until the link is back
    if node.state is NodeLifecycle.BOOTING:
        return _boot_deadline(node, config)
    if node.state in CONNECTED:
        return _silence_deadline(node, config)
    if node.state is NodeLifecycle.OFFLINE:
        due = [_recovery_deadline(node, config)] if node.recovery_at is not None else []
        if node.jobs or _unjudged_silence(node):
            due.append(_silence_deadline(node, config))
        return min(due, default=None)
    return None


def work_refusal(node: NodeRecord, reserved: int = 0) -> NodeStateError | None:
    """Why the node cannot take a job now, or None if it can. ``reserved``: jobs already given
    to it that its telemetry does not show yet."""
    if node.state not in (NodeLifecycle.IDLE, NodeLifecycle.BUSY):
        return NodeStateError(node.name, node.state.value, "cannot accept job")
    if not may_take_work(node.health):
        return NodeStateError(
            node.name,
            node.state.value,
            f"cannot accept job: health is {node.health.value} ({node.health_reason})",
        )
    if len(node.jobs) + reserved >= node.slots:
        return NodeStateError(
            node.name, node.state.value, f"cannot accept job: all {node.slots} job slots are in use"
        )
    return None


def can_accept_work(node: NodeRecord, reserved: int = 0) -> bool:
    return work_refusal(node, reserved) is None


# -- the rules, one function per event ----------------------------------------------------------


@dataclass
class _Step:
    """The record being built by one ``step``; the transitions and actions it produced."""

    node: NodeRecord
    at: float
    transitions: list[Transition] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)

    def update(self, **changes: object) -> None:
        self.node = replace(self.node, **changes)  # type: ignore[arg-type]

    def move(self, state: NodeLifecycle, reason: str, **changes: object) -> None:
        """Enter ``state`` (recorded with ``reason``) and drop what only the old state used.
        Staying in the same state records nothing but keeps the newer reason."""
        old = self.node.state
        if state is old:
            self.update(state_reason=reason, **changes)
            return
        if state is not NodeLifecycle.BOOTING:
            changes.setdefault("boot_started_at", None)
        if state is not NodeLifecycle.OFFLINE:
            changes.setdefault("recovery_at", None)
        if state not in CONNECTED:
            changes.setdefault("check_pending", False)
        if state is not NodeLifecycle.FAILED:
            changes.setdefault("failure", None)
        self.transitions.append(Transition(self.node.name, "state", old.value, state.value, reason, self.at))
        self.update(state=state, state_reason=reason, since=self.at, **changes)

    def set_health(self, health: Health, reason: str) -> None:
        old = self.node.health
        if health is old:
            return
        self.transitions.append(
            Transition(self.node.name, "health", old.value, health.value, reason, self.at)
        )
        pending = self.node.check_pending and health is Health.UNKNOWN
        self.update(health=health, health_reason=reason, health_since=self.at, check_pending=pending)

    def act(self, action: Action) -> None:
        self.actions.append(action)

    def refuse(self, detail: str) -> NodeStateError:
        return NodeStateError(self.node.name, self.node.state.value, detail)


def _power_on(s: _Step, e: PowerOn) -> None:
    n = s.node
    if not may_power_on(n.health):
        raise NodeStateError(n.name, n.health.value, "cannot be powered on")
    if n.state is NodeLifecycle.FAILED:
        raise s.refuse(f"cannot be powered on until an operator resets it (failed: {n.failure})")
    if n.state is NodeLifecycle.OFFLINE:
        raise s.refuse("cannot be powered on: it is powered but silent; reboot it to power-cycle")
    if n.state is not NodeLifecycle.OFF:
        return  # already powered: nothing to do
    s.act(SwitchPower(n.name, True, e.reason))
    s.move(NodeLifecycle.BOOTING, f"powered on: {e.reason}", powered=True, boot_started_at=s.at)


def _power_off(s: _Step, e: PowerOff) -> None:
    n = s.node
    if n.state is NodeLifecycle.OFF or (n.state is NodeLifecycle.FAILED and not n.powered):
        return
    _lose_jobs(s, f"powered off: {e.reason}")
    s.act(SwitchPower(n.name, False, e.reason))
    if n.state is NodeLifecycle.FAILED:
        s.update(powered=False)  # latched: the state stays failed
    else:
        s.move(NodeLifecycle.OFF, f"powered off: {e.reason}", powered=False)


def _reboot(s: _Step, e: Reboot) -> None:
    n = s.node
    if not may_power_on(n.health):
        raise NodeStateError(n.name, n.health.value, "cannot be power-cycled")
    if n.state is NodeLifecycle.FAILED:
        raise s.refuse(f"cannot be power-cycled until an operator resets it (failed: {n.failure})")
    _lose_jobs(s, f"power-cycled: {e.reason}")
    s.act(PowerCycle(n.name, 0, e.reason))
    s.move(NodeLifecycle.BOOTING, f"power-cycled: {e.reason}", powered=True, boot_started_at=s.at)


def _boot_requested(s: _Step) -> None:
    n = s.node
    if n.state is NodeLifecycle.FAILED:
        s.update(powered=True)  # latched
        return
    if n.state is NodeLifecycle.BOOTING:
        return
    if n.state is NodeLifecycle.OFF:
        reason = "PXE boot request: powered on outside the coordinator"
    else:
        reason = f"PXE boot request while {n.state.value}: the node rebooted"
    if n.jobs:
        lost = f"node rebooted while running {_count(n.jobs)}"
        _lose_jobs(s, lost)
        s.set_health(after_fault(n.health), f"infrastructure fault: {lost}")
    s.move(NodeLifecycle.BOOTING, reason, powered=True, boot_started_at=s.at)


def _agent_state(s: _Step, e: AgentState) -> None:
    n = s.node
    online = e.status == "online"
    if n.conn_seq is not None:
        if e.conn_seq < n.conn_seq:
            return  # from an older connection: stale
        if e.conn_seq == n.conn_seq and (online or not n.conn_online):
            return  # a repeat, or an online from a connection whose Will already came
    s.update(conn_seq=e.conn_seq, conn_online=online)
    if online:
        s.update(slots=e.slots, powered=True, online_at=s.at, lost=False)
    if n.state is NodeLifecycle.FAILED:
        return  # latched; the connection facts are kept for the reset
    if online:
        if n.state in CONNECTED:
            return  # the agent reconnected; its next telemetry tells what runs
        reason = f"agent online (conn_seq {e.conn_seq})"
        if n.state is NodeLifecycle.OFF:
            reason += " though the node was believed off"
        elif n.recovery_at is not None:
            reason += "; recovery power-cycle cancelled"
        s.update(reported=False)
        s.move(_up_state(s.node), reason)
    elif n.state in CONNECTED:
        s.move(NodeLifecycle.OFFLINE, f"agent offline (conn_seq {e.conn_seq}): connection closed or lost")


def _telemetry(s: _Step, e: Telemetry) -> None:
    n = s.node
    if n.state not in CONNECTED:
        return  # the state topic decides whether the agent is connected
    first = not n.reported
    s.update(last_telemetry_at=s.at, jobs=e.jobs, reported=True)
    target = _up_state(s.node)
    if target is not n.state:
        running = f"running {_count(e.jobs)}" if e.jobs else "no jobs running"
        s.move(target, f"{'first telemetry' if first else 'telemetry'}: {running}")


def _tick(s: _Step, config: LifecycleConfig) -> None:
    n = s.node
    if n.link_down:
        return  # the coordinator cannot hear the nodes: their silence is not their fault
    # Each test is "now >= the deadline next_deadline returned", computed the same way, so a
    # Tick sent at the deadline always fires (no float rounding in between).
    if n.state is NodeLifecycle.BOOTING:
        boot_deadline = _boot_deadline(n, config)
        if boot_deadline is not None and s.at >= boot_deadline:
            cause = f"did not come online within {_secs(config.boot_timeout)} s of power-on"
            if _after_link_grace(n, config):
                cause = f"not heard within {_secs(config.telemetry_timeout)} s of the coordinator's reconnect"
            _fault(s, cause, config)
    elif n.state in CONNECTED:
        heard = _heard_at(n)
        if s.at >= _silence_deadline(n, config):
            if _after_link_grace(n, config):
                cause = (
                    f"not heard within {_secs(s.at - heard)} s of the coordinator's reconnect to the broker"
                )
            elif n.reported:
                cause = f"no telemetry for {_secs(s.at - heard)} s"
            else:
                cause = f"online for {_secs(s.at - heard)} s without sending telemetry"
            if n.jobs:
                _fault(s, f"{cause} while running {_count(n.jobs)}", config)
            elif n.drain_reason is None:
                _fault(s, f"{cause} while not drained", config)  # a node that should be working
            else:
                s.move(NodeLifecycle.OFFLINE, cause)  # drained: the operator expects it to go
    elif n.state is NodeLifecycle.OFFLINE:
        if n.jobs:
            heard = _heard_at(n)
            if s.at >= _silence_deadline(n, config):
                _fault(s, f"silent for {_secs(s.at - heard)} s while running {_count(n.jobs)}", config)
        elif _unjudged_silence(n) and s.at >= _silence_deadline(n, config):
            # The agent said goodbye (or its Will did) and nothing came back: recover the node.
            _fault(
                s,
                f"silent for {_secs(s.at - _heard_at(n))} s since its agent went offline, not drained",
                config,
            )
        elif n.recovery_at is not None and s.at >= _recovery_deadline(n, config):
            reason = f"recovery power-cycle {n.recoveries} of {config.max_recoveries}"
            s.act(PowerCycle(n.name, n.recoveries, f"{reason}: {n.state_reason}"))
            s.move(NodeLifecycle.BOOTING, reason, powered=True, boot_started_at=s.at)


def _fault(s: _Step, cause: str, config: LifecycleConfig) -> None:
    """An infrastructure fault: the node failed to boot or was lost (with its jobs, if any).
    Re-queue the jobs, make good health unknown, then recover, give up, or leave it be."""
    _lose_jobs(s, cause)
    s.update(lost=True)
    s.set_health(after_fault(s.node.health), f"infrastructure fault: {cause}")
    n = s.node
    if not may_recover(n.health):
        s.move(NodeLifecycle.OFFLINE, f"{cause}; not recovered: health is {n.health.value}")
    elif not n.power_control:
        s.move(NodeLifecycle.OFFLINE, f"{cause}; not recovered: nothing can power-cycle it")
    elif n.recoveries >= config.max_recoveries:
        reason = f"{cause}; gave up after {n.recoveries} recovery power-cycles"
        s.move(NodeLifecycle.FAILED, reason, failure=reason)
        s.set_health(Health.BAD, f"recovery gave up: {reason}")  # an operator must look at it
    else:
        wait = config.backoff(n.recoveries)
        attempt = n.recoveries + 1
        reason = f"{cause}; recovery power-cycle {attempt} of {config.max_recoveries} in {_secs(wait)} s"
        s.move(NodeLifecycle.OFFLINE, reason, recovery_at=s.at + wait, recoveries=attempt)


def _drain(s: _Step, e: Drain) -> None:
    n = s.node
    if n.state is NodeLifecycle.DRAINING:
        return
    if n.state is NodeLifecycle.FAILED:
        raise s.refuse("cannot drain")
    if n.state not in CONNECTED:
        raise s.refuse("cannot drain: its agent is not connected")
    s.update(drain_reason=e.reason)
    s.move(NodeLifecycle.DRAINING, f"drained: {e.reason}")


def _undrain(s: _Step, e: Undrain) -> None:
    if s.node.drain_reason is None:
        return
    s.update(drain_reason=None)
    if s.node.state is NodeLifecycle.DRAINING:
        s.move(_up_state(s.node), f"undrained: {e.reason}")


def _set_health(s: _Step, e: SetHealth) -> None:
    if not e.reason.strip():
        raise ValueError(f"node {s.node.name}: a health change needs a reason")
    if e.health is s.node.health:
        return
    reason = f"set by {e.by}: {e.reason}"
    s.set_health(e.health, reason)
    if e.health is Health.GOOD:
        s.update(recoveries=0)
    if s.node.recovery_at is not None and not may_recover(e.health):
        s.update(recovery_at=None, state_reason=f"{s.node.state_reason}; recovery cancelled: {reason}")


def _check_result(s: _Step, e: HealthCheckResult) -> None:
    s.update(check_pending=False)
    health = after_check(s.node.health, e.passed)
    ref = f" (log {e.log_ref})" if e.log_ref else ""
    s.set_health(health, f"health check {'passed' if e.passed else 'failed'}{ref}")
    if health is Health.GOOD:
        s.update(recoveries=0)


def _reset(s: _Step, e: OperatorReset) -> None:
    n = s.node
    if n.state is not NodeLifecycle.FAILED:
        raise s.refuse("cannot be reset: only a failed node is reset")
    reason = f"reset by {e.by}: {e.reason}"
    s.update(recoveries=0, failure=None, reported=False)
    if n.conn_online and n.powered:
        s.move(_up_state(s.node), reason, online_at=s.at)
    elif n.powered:
        s.move(NodeLifecycle.OFFLINE, reason)
    else:
        s.move(NodeLifecycle.OFF, reason)


def _ask_for_health_check(s: _Step) -> None:
    """Rule after every event: a connected node of unknown health gets one health check."""
    n = s.node
    if n.health is Health.UNKNOWN and n.state in CONNECTED and not n.check_pending:
        s.act(RunHealthCheck(n.name, n.health_reason))
        s.update(check_pending=True)


# -- helpers ------------------------------------------------------------------------------------


def _up_state(n: NodeRecord) -> NodeLifecycle:
    """The connected state the record's facts call for."""
    if n.drain_reason is not None:
        return NodeLifecycle.DRAINING
    if not n.reported:
        return NodeLifecycle.ONLINE
    return NodeLifecycle.BUSY if n.jobs else NodeLifecycle.IDLE


def _link_grace_end(n: NodeRecord, config: LifecycleConfig) -> float | None:
    """Until when a node may stay unheard after the coordinator's link came back."""
    return None if n.link_up_at is None else n.link_up_at + config.telemetry_timeout


def _after_link_grace(n: NodeRecord, config: LifecycleConfig) -> bool:
    """The deadline that fired is the reconnect's grace, not the node's own silence or boot."""
    grace = _link_grace_end(n, config)
    if grace is None:
        return False
    if n.state is NodeLifecycle.BOOTING:
        own = _boot_deadline(n, config)
        return own is not None and grace > own
    times = [t for t in (n.online_at, n.last_telemetry_at) if t is not None]
    return n.link_up_at is not None and n.link_up_at > max(times, default=n.since)


def _boot_deadline(n: NodeRecord, config: LifecycleConfig) -> float | None:
    if n.boot_started_at is None:
        return None
    grace = _link_grace_end(n, config)
    own = n.boot_started_at + config.boot_timeout
    return own if grace is None else max(own, grace)


def _recovery_deadline(n: NodeRecord, config: LifecycleConfig) -> float:
    """A due recovery waits out the reconnect's grace: the node may have come back unheard."""
    assert n.recovery_at is not None
    grace = _link_grace_end(n, config)
    return n.recovery_at if grace is None else max(n.recovery_at, grace)


def _silence_deadline(n: NodeRecord, config: LifecycleConfig) -> float:
    return _heard_at(n) + config.telemetry_timeout


def _heard_at(n: NodeRecord) -> float:
    """When the agent was last heard from (its online state or its last telemetry), or when the
    coordinator's link came back, if later: silence before that was the coordinator's."""
    times = [t for t in (n.online_at, n.last_telemetry_at, n.link_up_at) if t is not None]
    return max(times, default=n.since)


def _unjudged_silence(n: NodeRecord) -> bool:
    """An offline node that is powered, not drained, not yet judged and not waiting for recovery:
    its silence will be judged an infrastructure fault at the silence deadline."""
    return n.powered and n.drain_reason is None and not n.lost and n.recovery_at is None


def _lose_jobs(s: _Step, reason: str) -> None:
    if s.node.jobs:
        s.act(RequeueJobs(s.node.name, s.node.jobs, reason))
        s.update(jobs=())


def _count(jobs: tuple[str, ...]) -> str:
    shown = ", ".join(jobs[:3]) + (", ..." if len(jobs) > 3 else "")
    return f"{len(jobs)} job{'s' if len(jobs) != 1 else ''} ({shown})"


def _secs(seconds: float) -> str:
    rounded = round(float(seconds), 1)
    return str(int(rounded)) if rounded.is_integer() else f"{rounded:.1f}"
