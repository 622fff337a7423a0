"""Energy from power samples: pure arithmetic.

Power is sampled per node on an interval; between two samples it is taken to change linearly
(trapezoids). A gap longer than ``max_gap`` (the sampler was down, the outlet could not be read)
is not bridged: it counts no energy and is reported as not covered, so a figure never silently
invents what nobody measured.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Energy", "integrate"]


@dataclass(frozen=True, slots=True)
class Energy:
    wh: float  # watt-hours within the window
    covered_s: float  # seconds of the window that samples cover
    window_s: float
    samples: int  # samples inside the window

    @property
    def mean_w(self) -> float | None:
        return self.wh * 3600 / self.covered_s if self.covered_s > 0 else None


def integrate(samples: Sequence[tuple[float, float]], since: float, until: float, max_gap: float) -> Energy:
    """Energy of ``samples`` ((time, watts), sorted by time) within [since, until].

    Samples outside the window still shape the power at its edges (interpolated there)."""
    if until < since:
        raise ValueError(f"energy window ends ({until}) before it starts ({since})")
    joules = 0.0
    covered = 0.0
    for (t0, w0), (t1, w1) in itertools.pairwise(samples):
        if t1 <= t0 or t1 - t0 > max_gap:
            continue
        a, b = max(t0, since), min(t1, until)
        if b <= a:
            continue
        wa = _at(t0, w0, t1, w1, a)
        wb = _at(t0, w0, t1, w1, b)
        joules += (wa + wb) / 2 * (b - a)
        covered += b - a
    inside = sum(1 for t, _ in samples if since <= t <= until)
    return Energy(wh=joules / 3600, covered_s=covered, window_s=until - since, samples=inside)


def _at(t0: float, w0: float, t1: float, w1: float, t: float) -> float:
    return w0 + (w1 - w0) * (t - t0) / (t1 - t0)
