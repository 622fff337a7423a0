"""Node health, the second axis beside the lifecycle state (pure rules, no I/O).

The lifecycle says where a node is (off, booting, idle, ...); health says whether it may be
trusted with work. ``lifecycle.step`` applies these rules; they live here so each reads in one
place:

- ``good``: a health check passed (or an operator said so); the only health that takes work.
- ``unknown``: nothing proven yet, or an infrastructure fault happened (recovery power-cycle,
  lost while busy, failed boot); a health check must pass before the node takes work again.
- ``bad``: a health check failed; it stays bad until an operator acts (a later passing check
  does not clear it).
- ``maintenance``: set by an operator; no work, no automatic recovery.
- ``retired``: set by an operator; no work, never powered on, never recovered.
"""

from __future__ import annotations

from enum import StrEnum


class Health(StrEnum):
    GOOD = "good"
    UNKNOWN = "unknown"
    BAD = "bad"
    MAINTENANCE = "maintenance"
    RETIRED = "retired"


OPERATOR_HELD = frozenset({Health.MAINTENANCE, Health.RETIRED})
"""Healths only an operator sets and only an operator clears."""


def after_fault(health: Health) -> Health:
    """The health after an infrastructure fault: good becomes unknown, anything else stays
    (a bad node stays bad, an operator's maintenance or retirement stands)."""
    return Health.UNKNOWN if health is Health.GOOD else health


def after_check(health: Health, passed: bool) -> Health:
    """The health after a health check: a pass proves an unknown node good, a failure makes a
    good or unknown node bad. Bad waits for an operator; operator-held healths stand."""
    if health in OPERATOR_HELD or health is Health.BAD:
        return health
    return Health.GOOD if passed else Health.BAD


def may_take_work(health: Health) -> bool:
    return health is Health.GOOD


def may_recover(health: Health) -> bool:
    """Whether the coordinator may power-cycle the node on its own. Not while an operator has it
    in maintenance (a surprise power-cycle under someone's hands), never when retired."""
    return health not in OPERATOR_HELD


def may_power_on(health: Health) -> bool:
    return health is not Health.RETIRED
