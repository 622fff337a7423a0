"""A job that asks for the HIL bench goes only to a node whose labels say it has that board."""

from __future__ import annotations

from scalerunner.coordinator.jobs.core import Dispatch, NodeSlot, Scheduler, hil_label
from scalerunner.coordinator.jobs.spec import parse_spec


def test_hil_job_is_placed_only_on_a_node_with_its_board() -> None:
    spec = parse_spec(
        '{"command": ["scalerunner-bench", "check"], '
        '"hil": {"board": "arty_a7_35t", "bitstream": "counter.bit"}}',
        "job.json",
    )
    s = Scheduler()
    s.submit("hil", spec, 0.0)
    plain = NodeSlot("plain", "amd64", frozenset(), 4, 4096, True)
    other = NodeSlot("ice", "amd64", frozenset({hil_label("icebreaker")}), 4, 4096, True)
    assert [a for a in s.schedule([plain, other], 1.0) if isinstance(a, Dispatch)] == []
    arty = NodeSlot("arty", "amd64", frozenset({"hil:arty_a7_35t"}), 4, 4096, True)
    placed = [a for a in s.schedule([plain, other, arty], 2.0) if isinstance(a, Dispatch)]
    assert [d.node for d in placed] == ["arty"]
