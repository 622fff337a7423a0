"""Recovery's end in the lifecycle core: a node that never comes back is failed AND bad."""

from __future__ import annotations

from scalerunner.coordinator import lifecycle as lc
from scalerunner.coordinator.health import Health


def test_recovery_that_gives_up_marks_the_node_failed_and_its_health_bad_with_a_reason() -> None:
    cfg = lc.LifecycleConfig(boot_timeout=10, backoff_base=1, backoff_cap=4, max_recoveries=2)
    node = lc.new_node("n1", 0.0, health=Health.GOOD, reason="checked")
    node, _, actions = lc.step(node, lc.PowerOn(at=0.0), cfg)
    assert actions == [lc.SwitchPower("n1", True, "operator request")]
    cycles = []
    transitions: list[lc.Transition] = []
    for _ in range(10):
        due = lc.next_deadline(node, cfg)
        if due is None:
            break
        node, t, actions = lc.step(node, lc.Tick(at=due), cfg)
        transitions += t
        cycles += [a.attempt for a in actions if isinstance(a, lc.PowerCycle)]
    assert cycles == [1, 2]  # bounded: max_recoveries cycles, then no more
    assert node.state is lc.NodeLifecycle.FAILED and node.health is Health.BAD
    last = [x for x in transitions if x.axis == "health"][-1]
    assert (last.old, last.new) == ("unknown", "bad")
    assert last.reason == (
        "recovery gave up: did not come online within 10 s of power-on; gave up after 2 recovery power-cycles"
    )
    # an operator's power-off of the failed node is still carried out
    node, _, actions = lc.step(node, lc.PowerOff(at=100.0), cfg)
    assert actions == [lc.SwitchPower("n1", False, "operator request")]
