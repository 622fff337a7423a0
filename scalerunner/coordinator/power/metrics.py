"""Power in ``GET /metrics``: watts and energy per node, actions and failures (read at scrape time)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .manager import PowerManager

__all__ = ["PowerCollector"]


class PowerCollector(Collector):
    def __init__(self, power: PowerManager) -> None:
        self._power = power

    def collect(self) -> Iterable[Metric]:
        p = self._power
        watts = GaugeMetricFamily(
            "scalerunner_node_power_watts", "power drawn at the node's outlet, last sample", labels=["node"]
        )
        for node, (_, w) in sorted(p.watts.items()):
            watts.add_metric([node], w)
        energy = CounterMetricFamily(
            "scalerunner_node_energy_watt_hours",
            "energy drawn at the node's outlet since the coordinator started",
            labels=["node"],
        )
        for node, wh in sorted(p.energy_wh.items()):
            energy.add_metric([node], wh)
        actions = CounterMetricFamily("scalerunner_power_actions", "power actions started", labels=["op"])
        for op, n in sorted(p.actions.items()):
            actions.add_metric([op], float(n))
        failures = CounterMetricFamily(
            "scalerunner_power_failures", "power actions that failed", labels=["cause"]
        )
        for cause, n in sorted(p.failures.items()):
            failures.add_metric([cause], float(n))
        yield from (watts, energy, actions, failures)
