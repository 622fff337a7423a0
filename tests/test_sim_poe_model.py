"""The simulated PoE switch's behaviour without SNMP: the budget rule, detection states, the
reported power changes and the MIB view the agent serves."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from scalerunner.sim.poe_model import (
    MAIN_PSE,
    PETH_PORT,
    SIM_PORT_POWER_MW,
    Detection,
    PoeSwitchModel,
)

PORTS = 8
ports = st.integers(1, PORTS)


class SwitchMachine(RuleBasedStateMachine):
    """Random front-panel actions; after each, the reported changes and the states must agree
    with the class-based budget rule."""

    def __init__(self) -> None:
        super().__init__()
        self.model = PoeSwitchModel(ports=PORTS, budget_w=30, max_w=7.5)
        self.powered = self._powered()

    def _powered(self) -> set[int]:
        return {n for n, p in self.model.port_state.items() if p.detection is Detection.DELIVERING_POWER}

    def _apply(self, changes: list[tuple[int, bool]]) -> None:
        now = self._powered()
        assert {p for p, on in changes if on} == now - self.powered
        assert {p for p, on in changes if not on} == self.powered - now
        assert len(changes) == len({p for p, _ in changes})
        self.powered = now

    @rule(port=ports, on=st.booleans())
    def admin(self, port: int, on: bool) -> None:
        self._apply(self.model.set_admin(port, on))

    @rule(port=ports, present=st.booleans())
    def device(self, port: int, present: bool) -> None:
        self._apply(self.model.set_device(port, present))

    @rule(port=ports, fault=st.booleans())
    def fault(self, port: int, fault: bool) -> None:
        self._apply(self.model.set_fault(port, fault))

    @rule(budget=st.integers(0, 80))
    def budget(self, budget: int) -> None:
        self._apply(self.model.set_budget(budget))

    @rule(port=ports, load=st.floats(0, 1))
    def load(self, port: int, load: float) -> None:
        self.model.set_load(port, load)
        assert self.model.settle() == []  # load never switches a port: the budget reserves class power

    @invariant()
    def budget_rule_holds(self) -> None:
        reserved = 0.0
        for n, p in self.model.port_state.items():
            wants = p.admin_on and p.device and not p.fault
            if p.detection is Detection.DELIVERING_POWER:
                assert wants
                reserved += p.max_w
            elif p.detection is Detection.OTHER_FAULT:
                assert wants and reserved + p.max_w > self.model.budget_w, n
            elif p.detection is Detection.DISABLED:
                assert not p.admin_on
            elif p.detection is Detection.SEARCHING:
                assert p.admin_on and not p.device
            elif p.detection is Detection.FAULT:
                assert p.admin_on and p.device and p.fault
        assert reserved <= self.model.budget_w

    @invariant()
    def power_is_drawn_only_where_delivered(self) -> None:
        for n in self.model.port_state:
            w = self.model.watts(n)
            assert (w > 0) == (n in self.powered)
            mw = self.model.value((*SIM_PORT_POWER_MW, 1, n))
            assert mw is not None and mw.value == round(w * 1000)
        assert self.model.consumption_w() == pytest.approx(sum(self.model.watts(n) for n in self.powered))


TestSwitchMachine = SwitchMachine.TestCase


def test_a_draw_callback_replaces_the_load_model_and_is_capped_at_the_class_power() -> None:
    model = PoeSwitchModel(ports=2, idle_w=2.0, max_w=6.0)
    model.set_load(1, 0.5)
    assert model.watts(1) == pytest.approx(4.0)
    model.set_draw(1, lambda: 5.25)
    assert model.watts(1) == pytest.approx(5.25)
    model.set_draw(1, lambda: 50.0)
    assert model.watts(1) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="port 2"):
        model.set_load(2, 1.5)
    with pytest.raises(KeyError, match="no port 3"):
        model.set_admin(3, False)


def test_the_mib_view_is_sorted_and_every_listed_oid_has_a_value() -> None:
    model = PoeSwitchModel(ports=5, group=2)
    oids = model.oids()
    assert oids == sorted(oids)
    assert all(model.value(o) is not None for o in oids)
    assert model.value((*PETH_PORT, 3, 2, 6)) is None  # no port 6
    assert model.value((*PETH_PORT, 3, 1, 1)) is None  # group 1 is not this switch's
    assert model.known_column((*PETH_PORT, 3, 2, 6))
    assert not model.known_column((1, 3, 6, 1, 4, 1, 9, 9, 402, 1, 2, 1, 9, 2, 1))
    assert model.admin_write((*PETH_PORT, 3, 2, 5)) == 5
    assert model.admin_write((*PETH_PORT, 6, 2, 5)) is None


def test_pse_consumption_can_be_reported_in_mw_like_the_firmwares_with_that_quirk() -> None:
    plain = PoeSwitchModel(ports=4, idle_w=3.0)
    quirky = PoeSwitchModel(ports=4, idle_w=3.0, consumption_in_mw=True)
    oid = (*MAIN_PSE, 4, 1)
    assert (v := plain.value(oid)) is not None and v.value == 12
    assert (v := quirky.value(oid)) is not None and v.value == 12000
