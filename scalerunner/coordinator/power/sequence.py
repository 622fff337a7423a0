"""Power sequencing: on, off and cycle of one outlet as a pure state machine.

``advance(seq, observation, now)`` decides the next step from what the shell saw; the shell
(manager.py) only carries out the command it returns (switch, read the status, wait) and reports
back. A cycle is: set off, poll until the outlet leaves "on" (deliveringPower), hold the minimum
off time, set on, poll until it is on again or reports a fault. Each wait has a timeout, and a
failure says what state the outlet was left in, so nothing is left half-done without saying so.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from .base import PowerState

__all__ = [
    "Accepted",
    "Command",
    "Failed",
    "Finish",
    "Observation",
    "Observed",
    "Op",
    "Phase",
    "Poll",
    "Sequence",
    "SequenceConfig",
    "SetPower",
    "Wait",
    "Woke",
    "advance",
    "begin",
]


class Op(enum.StrEnum):
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"


class Phase(enum.StrEnum):
    SWITCH_OFF = "switch-off"  # the off request is out
    WAIT_OFF = "wait-off"  # polling until the outlet stops delivering power
    HOLD_OFF = "hold-off"  # the minimum off time
    SWITCH_ON = "switch-on"
    WAIT_ON = "wait-on"  # polling until it delivers power (or reports a fault)
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SequenceConfig:
    """Seconds. ``min_off``: how long a cycled node stays unpowered (capacitors drain, the
    node really resets); the timeouts bound each wait; ``poll_interval`` spaces status reads."""

    min_off: float = 2.0
    off_timeout: float = 10.0
    on_timeout: float = 15.0
    poll_interval: float = 0.25

    def __post_init__(self) -> None:
        for key in ("off_timeout", "on_timeout", "poll_interval"):
            if not getattr(self, key) > 0:
                raise ValueError(f"power {key} must be > 0, not {getattr(self, key)!r}")
        if self.min_off < 0:
            raise ValueError(f"power min_off must be >= 0, not {self.min_off!r}")


@dataclass(frozen=True, slots=True)
class Sequence:
    """One outlet's operation in progress. ``since``: when the current phase began;
    ``off_at``: when the outlet was seen off (a cycle's hold counts from there); ``last``: the
    last status detail read, quoted in a timeout."""

    outlet: str
    op: Op
    config: SequenceConfig
    phase: Phase
    since: float
    off_at: float | None = None
    last: str = ""
    cause: str = ""  # set when FAILED: a PowerError cause
    message: str = ""  # set when DONE or FAILED


# -- what the shell saw ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The back end accepted the set-power request."""


@dataclass(frozen=True, slots=True)
class Observed:
    """A status read: the outlet's state and the back end's raw detail."""

    state: PowerState
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Woke:
    """A ``Wait`` is over."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The back end raised ``PowerError(cause, message)``."""

    cause: str
    message: str


Observation = Accepted | Observed | Woke | Failed


# -- what the shell must do --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetPower:
    on: bool


@dataclass(frozen=True, slots=True)
class Poll:
    pass


@dataclass(frozen=True, slots=True)
class Wait:
    until: float


@dataclass(frozen=True, slots=True)
class Finish:
    ok: bool
    cause: str
    message: str


Command = SetPower | Poll | Wait | Finish


def begin(outlet: str, op: Op, now: float, config: SequenceConfig) -> tuple[Sequence, Command]:
    """The first step of ``op`` on ``outlet``: on starts by switching on, off and cycle by off."""
    phase = Phase.SWITCH_ON if op is Op.ON else Phase.SWITCH_OFF
    return Sequence(outlet, op, config, phase, now), SetPower(op is Op.ON)


def advance(seq: Sequence, obs: Observation, now: float) -> tuple[Sequence, Command]:
    """The next state and command after ``obs``. A finished sequence stays finished."""
    if seq.phase in (Phase.DONE, Phase.FAILED):
        return seq, _finish(seq)
    if isinstance(obs, Failed):
        return _fail(seq, obs.cause, f"{obs.message}; {_left(seq)}")
    match seq.phase:
        case Phase.SWITCH_OFF | Phase.SWITCH_ON if isinstance(obs, Accepted):
            nxt = Phase.WAIT_OFF if seq.phase is Phase.SWITCH_OFF else Phase.WAIT_ON
            return replace(seq, phase=nxt, since=now), Poll()
        case Phase.WAIT_OFF | Phase.WAIT_ON if isinstance(obs, Observed):
            return _polled(replace(seq, last=obs.detail or obs.state.value), obs.state, now)
        case Phase.WAIT_OFF | Phase.WAIT_ON if isinstance(obs, Woke):
            return seq, Poll()
        case Phase.HOLD_OFF if isinstance(obs, Woke):
            assert seq.off_at is not None
            if now < seq.off_at + seq.config.min_off:
                return seq, Wait(seq.off_at + seq.config.min_off)  # woke early: wait the rest
            return replace(seq, phase=Phase.SWITCH_ON, since=now), SetPower(True)
    # An observation the phase does not expect (a stray Woke, say) changes nothing.
    return seq, _expected(seq)


def _polled(seq: Sequence, state: PowerState, now: float) -> tuple[Sequence, Command]:
    cfg = seq.config
    if seq.phase is Phase.WAIT_OFF:
        if state is not PowerState.ON and state is not PowerState.UNKNOWN:
            if seq.op is Op.OFF:
                return _done(seq, f"off ({seq.last})")
            held = replace(seq, phase=Phase.HOLD_OFF, since=now, off_at=now)
            return held, Wait(now + cfg.min_off)
        deadline = seq.since + cfg.off_timeout
        if now >= deadline:
            return _fail(
                seq,
                "timeout",
                f"still {seq.last} {_secs(now - seq.since)} s after it was switched off; {_left(seq)}",
            )
        return seq, Wait(min(now + cfg.poll_interval, deadline))
    # WAIT_ON
    if state is PowerState.ON:
        return _done(seq, f"on ({seq.last})")
    if state is PowerState.FAULT:
        return _fail(seq, "fault", f"switched on but reports a fault ({seq.last}); {_left(seq)}")
    deadline = seq.since + cfg.on_timeout
    if now >= deadline:
        return _fail(
            seq,
            "timeout",
            f"not delivering power {_secs(now - seq.since)} s after it was switched on "
            f"(last status {seq.last}); {_left(seq)}",
        )
    return seq, Wait(min(now + cfg.poll_interval, deadline))


def _left(seq: Sequence) -> str:
    """The state the outlet is left in, said plainly: the point of "nothing half-done"."""
    if seq.phase in (Phase.SWITCH_OFF, Phase.WAIT_OFF):
        return "the outlet was asked to switch off and may still be on"
    if seq.phase is Phase.HOLD_OFF:
        return "the outlet is left off"
    return "the outlet was asked to switch on and is not confirmed on"


def _done(seq: Sequence, message: str) -> tuple[Sequence, Command]:
    seq = replace(seq, phase=Phase.DONE, message=message)
    return seq, _finish(seq)


def _fail(seq: Sequence, cause: str, message: str) -> tuple[Sequence, Command]:
    seq = replace(seq, phase=Phase.FAILED, cause=cause, message=f"{seq.op.value}: {message}")
    return seq, _finish(seq)


def _finish(seq: Sequence) -> Finish:
    return Finish(seq.phase is Phase.DONE, seq.cause, seq.message)


def _expected(seq: Sequence) -> Command:
    """The command the phase is waiting on, asked again."""
    if seq.phase is Phase.SWITCH_OFF:
        return SetPower(False)
    if seq.phase is Phase.SWITCH_ON:
        return SetPower(True)
    if seq.phase is Phase.HOLD_OFF:
        assert seq.off_at is not None
        return Wait(seq.off_at + seq.config.min_off)
    return Poll()


def _secs(seconds: float) -> str:
    return f"{seconds:.1f}"
