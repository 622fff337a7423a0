"""The pure parts of node power: the on/off/cycle sequence against a model outlet (hypothesis),
outlets from the inventory, bulk result shaping, and energy integration."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalerunner.coordinator.inventory import PowerConfig, inventory_from_dict
from scalerunner.coordinator.power import sequence as sq
from scalerunner.coordinator.power.base import OutletStatus, PowerError, PowerState
from scalerunner.coordinator.power.energy import integrate
from scalerunner.coordinator.power.outlets import Outlet, outlet_map
from scalerunner.coordinator.power.results import exit_code, shape

CAUSES = {"timeout", "fault", "auth", "no-such-object", "wrong-value", "unreachable"}
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ModelOutlet:
    """An outlet that takes ``off_delay``/``on_delay`` seconds to follow a request (None: never),
    may fault when switched on, and may fail a request. Time only moves by the sequence's waits
    and by each status read taking ``read_time``."""

    off_delay: float | None
    on_delay: float | None
    faults: bool
    read_time: float
    fail_at: int | None  # the index of the request that raises, if any
    fail_cause: str = "timeout"
    now: float = 0.0
    state: PowerState = PowerState.ON
    admin: bool = True
    admin_at: float = 0.0
    requests: int = 0
    log: list[tuple[float, str, object]] = field(default_factory=list)

    def physical(self) -> PowerState:
        delay = self.on_delay if self.admin else self.off_delay
        if delay is None or self.now < self.admin_at + delay:
            return self.state
        if self.admin:
            return PowerState.FAULT if self.faults else PowerState.ON
        return PowerState.OFF

    def carry_out(self, cmd: sq.Command) -> sq.Observation:
        self.requests += 1
        if self.fail_at is not None and self.requests == self.fail_at:
            self.log.append((self.now, "failed", cmd))
            return sq.Failed(self.fail_cause, "injected")
        match cmd:
            case sq.SetPower(on=on):
                self.state = self.physical()
                self.admin, self.admin_at = on, self.now
                self.log.append((self.now, "set", on))
                return sq.Accepted()
            case sq.Poll():
                self.now += self.read_time
                self.state = self.physical()
                self.log.append((self.now, "read", self.state))
                return sq.Observed(self.state, self.state.value)
            case sq.Wait(until=until):
                assert until >= self.now - 1e-9 or True
                self.now = max(self.now, until)
                return sq.Woke()
        raise AssertionError(cmd)


delays = st.one_of(st.none(), st.floats(0, 30, allow_nan=False))
configs = st.builds(
    sq.SequenceConfig,
    min_off=st.floats(0, 5),
    off_timeout=st.floats(0.5, 10),
    on_timeout=st.floats(0.5, 10),
    poll_interval=st.floats(0.05, 2),
)


def drive(op: sq.Op, cfg: sq.SequenceConfig, outlet: ModelOutlet) -> tuple[sq.Sequence, sq.Finish, int]:
    seq, cmd = sq.begin("sw1:7", op, outlet.now, cfg)
    steps = 0
    while not isinstance(cmd, sq.Finish):
        steps += 1
        assert steps < 100_000, "the sequence does not end"
        seq, cmd = sq.advance(seq, outlet.carry_out(cmd), outlet.now)
    return seq, cmd, steps


@settings(max_examples=400, deadline=None)
@given(
    op=st.sampled_from(list(sq.Op)),
    cfg=configs,
    off_delay=delays,
    on_delay=delays,
    faults=st.booleans(),
    read_time=st.floats(0, 0.2),
    fail_at=st.one_of(st.none(), st.integers(1, 30)),
    fail_cause=st.sampled_from(sorted(CAUSES)),
)
def test_a_sequence_ends_switching_on_only_after_the_minimum_off_time_and_says_why_it_failed(
    op: sq.Op,
    cfg: sq.SequenceConfig,
    off_delay: float | None,
    on_delay: float | None,
    faults: bool,
    read_time: float,
    fail_at: int | None,
    fail_cause: str,
) -> None:
    outlet = ModelOutlet(off_delay, on_delay, faults, read_time, fail_at, fail_cause)
    seq, fin, _ = drive(op, cfg, outlet)
    sets = [(t, on) for t, kind, on in outlet.log if kind == "set"]
    reads = [(t, s) for t, kind, s in outlet.log if kind == "read"]
    # the requests follow the op: on is [on]; off is [off]; a cycle is [off] then maybe [on]
    expected = {sq.Op.ON: [True], sq.Op.OFF: [False], sq.Op.CYCLE: [False, True]}[op]
    assert [on for _, on in sets] == expected[: len(sets)]
    if op is sq.Op.CYCLE and len(sets) == 2:
        # switched on only after a read saw it off, and min_off after that read
        seen_off = [t for t, s in reads if t <= sets[1][0] and s is not PowerState.ON]
        assert seen_off and sets[1][0] >= seen_off[0] + cfg.min_off - 1e-9
    # every wait is bounded: the whole sequence ends within its timeouts (plus one read each)
    bound = cfg.off_timeout + cfg.min_off + cfg.on_timeout + 2 * read_time + 1e-6
    assert outlet.now <= bound
    last = reads[-1][1] if reads else None
    if fin.ok:
        assert seq.phase is sq.Phase.DONE
        if op is sq.Op.OFF:
            assert last not in (None, PowerState.ON, PowerState.UNKNOWN)  # not delivering power
        else:
            assert last is PowerState.ON
    else:
        assert seq.phase is sq.Phase.FAILED and fin.cause in CAUSES
        assert fin.message.startswith(f"{op.value}: ") and "outlet" in fin.message
    # a finished sequence stays finished, whatever comes
    assert sq.advance(seq, sq.Woke(), outlet.now + 100) == (seq, fin)


@settings(max_examples=200, deadline=None)
@given(
    cfg=configs,
    off_delay=st.floats(0, 5),
    on_delay=st.floats(0, 5),
    read_time=st.floats(0, 0.05),
)
def test_an_outlet_that_follows_within_the_timeouts_is_cycled_ok(
    cfg: sq.SequenceConfig, off_delay: float, on_delay: float, read_time: float
) -> None:
    ok_cfg = sq.SequenceConfig(
        min_off=cfg.min_off,
        off_timeout=off_delay + cfg.poll_interval + 2 * read_time + 0.01,
        on_timeout=on_delay + cfg.poll_interval + 2 * read_time + 0.01,
        poll_interval=cfg.poll_interval,
    )
    _, fin, _ = drive(sq.Op.CYCLE, ok_cfg, ModelOutlet(off_delay, on_delay, False, read_time, None))
    assert fin.ok, fin.message


def test_a_fault_after_switching_on_fails_at_once_and_says_so() -> None:
    cfg = sq.SequenceConfig(min_off=1, off_timeout=5, on_timeout=60, poll_interval=0.5)
    outlet = ModelOutlet(0.2, 0.3, True, 0.0, None)
    _, fin, _ = drive(sq.Op.CYCLE, cfg, outlet)
    assert (fin.ok, fin.cause) == (False, "fault")
    assert fin.message == (
        "cycle: switched on but reports a fault (fault); "
        "the outlet was asked to switch on and is not confirmed on"
    )
    assert outlet.now < 3


def test_a_port_that_never_goes_off_times_out_and_is_never_switched_on() -> None:
    cfg = sq.SequenceConfig(min_off=1, off_timeout=2, on_timeout=2, poll_interval=0.5)
    outlet = ModelOutlet(None, 0.0, False, 0.0, None)
    _, fin, _ = drive(sq.Op.CYCLE, cfg, outlet)
    assert (fin.ok, fin.cause) == (False, "timeout")
    assert "still on 2.0 s after it was switched off; the outlet was asked to switch off" in fin.message
    assert [on for _, kind, on in outlet.log if kind == "set"] == [False]


def test_sequence_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="off_timeout"):
        sq.SequenceConfig(off_timeout=0)
    with pytest.raises(ValueError, match="min_off"):
        sq.SequenceConfig(min_off=-1)


# -- outlets ---------------------------------------------------------------------------------

INV = {
    "cluster": {"name": "lab"},
    "switches": [
        {
            "name": "sw1",
            "address": "127.0.0.1",
            "profile": "generic",
            "snmp": {"version": "2c", "community": "x"},
            "uplink_ports": [47, 48],
        },
    ],
    "nodes": [
        {"name": "n1", "mac": "02:00:00:00:00:01", "arch": "arm64", "switch": "sw1", "port": 1},
        {"name": "n2", "mac": "02:00:00:00:00:02", "arch": "arm64", "bmc_port": "/dev/ttyX"},
        {"name": "n3", "mac": "02:00:00:00:00:03", "arch": "arm64"},
        {
            "name": "n4",
            "mac": "02:00:00:00:00:04",
            "arch": "arm64",
            "switch": "sw1",
            "port": 2,
            "bmc_port": "/dev/ttyY",
        },
    ],
}


def test_outlets_come_from_the_inventory_and_nothing_else_is_ever_switched() -> None:
    m = outlet_map(inventory_from_dict(INV, "/tmp/s.toml"))
    assert m.outlet("n1") == Outlet("sw1", 1) and m.outlet("n1").name == "sw1:1"
    assert m.outlet("n2") == Outlet("bmc:/dev/ttyX", 1) and m.outlet("n2").name == "bmc:/dev/ttyX"
    assert m.outlet("n4") == Outlet("sw1", 2)  # the switch port wins over the BMC
    with pytest.raises(PowerError, match="n3: the inventory gives this node no switch port or BMC") as info:
        m.outlet("n3")
    assert info.value.cause == "not-assigned"
    for outlet, words in [(Outlet("sw1", 48), "is an uplink port"), (Outlet("sw1", 3), "powers no node")]:
        with pytest.raises(PowerError, match=words) as info:
            m.check(outlet)
        assert (info.value.cause, info.value.outlet) == ("not-assigned", outlet.name)
    m.check(Outlet("sw1", 2))


def test_docs_inventory_md_has_a_row_for_every_power_key() -> None:
    text = (ROOT / "docs" / "inventory.md").read_text()
    section = text.split("## `[power]`\n", 1)[1].split("\n## ", 1)[0]
    documented = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    assert documented == set(PowerConfig.__struct_fields__)


# -- bulk results ----------------------------------------------------------------------------

statuses = st.builds(
    OutletStatus,
    outlet=st.just("sw1:1"),
    admin_on=st.booleans(),
    state=st.sampled_from(list(PowerState)),
    watts=st.one_of(st.none(), st.floats(0, 100)),
)
outcomes = st.one_of(
    statuses,
    st.builds(PowerError, st.just("sw1:2"), st.sampled_from(sorted(CAUSES)), st.text(max_size=20)),
    st.builds(RuntimeError, st.text(max_size=10)),
)


@given(
    nodes=st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True),
    got=st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e", "zz"]), outcomes),
)
def test_bulk_results_say_per_node_ok_or_why_in_the_order_asked(
    nodes: list[str], got: dict[str, object]
) -> None:
    results = shape(nodes, got, {n: f"sw1:{i}" for i, n in enumerate(nodes)})  # type: ignore[arg-type]
    assert [r.node for r in results] == nodes
    for r in results:
        assert r.ok == isinstance(got.get(r.node), OutletStatus)
        outcome = got.get(r.node)
        if isinstance(outcome, PowerError):
            assert (r.cause, r.message, r.outlet) == (outcome.cause, str(outcome), "sw1:2")
        elif outcome is None:
            assert r.cause == "not-run" and r.node in r.message
        elif not isinstance(outcome, OutletStatus):
            assert r.cause == "error" and r.message == f"{r.node}: {outcome}"
    assert exit_code(results) == (0 if all(r.ok for r in results) else 1)


# -- energy ----------------------------------------------------------------------------------

samples_st = st.lists(
    st.tuples(st.floats(0, 1000, allow_nan=False), st.floats(0, 200, allow_nan=False)), max_size=30
).map(lambda xs: sorted(dict(xs).items()))


@given(samples=samples_st, cuts=st.lists(st.floats(-10, 1010), min_size=3, max_size=3))
def test_energy_adds_up_over_adjacent_windows_and_is_never_negative(
    samples: list[tuple[float, float]], cuts: list[float]
) -> None:
    a, b, c = sorted(cuts)
    whole = integrate(samples, a, c, max_gap=50)
    left, right = integrate(samples, a, b, max_gap=50), integrate(samples, b, c, max_gap=50)
    assert whole.wh >= 0 and whole.covered_s <= whole.window_s + 1e-9
    assert math.isclose(whole.wh, left.wh + right.wh, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(whole.covered_s, left.covered_s + right.covered_s, rel_tol=1e-9, abs_tol=1e-9)


@given(watts=st.floats(0, 500), start=st.floats(0, 100), length=st.floats(1, 100))
def test_a_constant_draw_gives_watts_times_hours(watts: float, start: float, length: float) -> None:
    samples = [(t, watts) for t in range(0, 300, 10)]
    e = integrate(samples, start, start + length, max_gap=10)
    assert math.isclose(e.wh, watts * length / 3600, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(e.covered_s, length)


def test_a_gap_longer_than_max_gap_counts_nothing_and_shows_as_not_covered() -> None:
    e = integrate([(0, 100.0), (10, 100.0), (100, 100.0), (110, 100.0)], 0, 110, max_gap=30)
    assert (e.wh, e.covered_s, e.window_s, e.samples) == (pytest.approx(20 * 100 / 3600), 20, 110, 4)
    with pytest.raises(ValueError, match="ends"):
        integrate([], 5, 4, max_gap=1)
