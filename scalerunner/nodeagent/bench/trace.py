"""What a pin back end observes: each signal's level at the start and every change after.

Times are seconds of board time since the observation began (a simulation's time is scaled to
it, see ``SimSpec.time_scale``). A level is 0, 1 or None (unknown: a simulator's x or z).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["Change", "Drive", "Level", "Trace"]

Level = int | None


@dataclass(frozen=True, order=True)
class Change:
    t: float
    signal: str
    value: Level


@dataclass(frozen=True)
class Drive:
    """The node sets ``signal`` (a board input) to ``value`` at ``t`` seconds."""

    t: float
    signal: str
    value: int


@dataclass
class Trace:
    initial: dict[str, Level]
    changes: list[Change] = field(default_factory=list)
    end: float = 0.0  # how long was observed

    def edges(self, signal: str) -> list[tuple[float, Level]]:
        """``signal``'s level over time: (0, initial) then (t, value) at each change."""
        out: list[tuple[float, Level]] = [(0.0, self.initial.get(signal))]
        for c in self.changes:
            if c.signal == signal and c.value != out[-1][1]:
                out.append((c.t, c.value))
        return out


def level_at(edges: list[tuple[float, Level]], t: float) -> Level:
    """The level of an ``edges`` list at time ``t`` (a change at exactly ``t`` counts)."""
    i = bisect.bisect_right(edges, t, key=lambda e: e[0]) - 1
    return edges[max(i, 0)][1]
