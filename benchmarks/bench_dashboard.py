"""The dashboard feed's look at a 1000-node rack, against the interval it must fit in.

While a browser watches, the feed (coordinator/dashboard/feed.py) looks at every node every 0.25 s:
its view, its LED drawn by the agent's gauge_of and the firmware's render.gauge, its watts, and a
comparison with the last look. Here every node's load moves on every look (the worst case: all
1000 entries change and are queued for two open streams). The figure is the interval over the
time one look takes: how many looks would fit in one interval of one core (1.0 would leave the
coordinator no time for anything else). The same look over 14 nodes (one row) is shown beside it.
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.common import Figure
from scalerunner.coordinator.api.models import NodeView, TelemetryView
from scalerunner.coordinator.dashboard.feed import Feed

ROUNDS = 20


class _Rack:
    def __init__(self, n: int) -> None:
        self.n = n
        self.step = 0

    def views(self) -> list[NodeView]:
        self.step += 1
        return [
            NodeView(
                name=f"rack{i // 14 + 1}-{i % 14 + 1:02d}",
                state="busy",
                health="good",
                arch="arm64",
                mac="02:00:00:00:00:01",
                telemetry=TelemetryView(
                    ts=float(self.step),
                    load1=(i + self.step) % 9 / 2,
                    cpu_pct=50,
                    mem_used_mb=900,
                    mem_total_mb=4096,
                    temp_c=30 + (i + self.step) % 50,
                    age_s=0.1,
                ),
            )
            for i in range(self.n)
        ]


def _look_seconds(n: int) -> float:
    async def main() -> float:
        rack = _Rack(n)
        feed = Feed(rack, {}, queue_size=10 * n * ROUNDS)
        await feed.subscribe()
        await feed.subscribe()
        best = float("inf")
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            feed.look()
            best = min(best, time.perf_counter() - t0)
        return best

    return asyncio.run(main())


def run() -> list[Figure]:
    interval = 0.25  # Feed's default interval
    figures = []
    for n in (1000, 14):
        took = _look_seconds(n)
        figures.append(
            Figure(
                name=f"dashboard look, {n} nodes all changed, 2 streams",
                measured=f"{took * 1000:.1f} ms",
                against=f"look interval {interval * 1000:.0f} ms",
                ratio=interval / took,
                target=3.0 if n == 1000 else None,  # a watching browser costs under a third of a core
            )
        )
    return figures
