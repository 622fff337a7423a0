"""`GET /metrics`: node state, health and telemetry, and the coordinator's own
counters, in the Prometheus text format (prometheus_client).

A custom collector reads the live values at scrape time, so nothing is copied
into gauges that could go stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .api.models import NodeView

STATES = ("off", "booting", "online", "idle", "busy", "draining", "offline", "failed")
HEALTHS = ("good", "unknown", "bad", "maintenance", "retired")


class LinkCounts(Protocol):
    """What the MQTT link counts (``CoordinatorLink``)."""

    @property
    def ingested(self) -> Mapping[str, int]: ...
    @property
    def rejected(self) -> Mapping[str, int]: ...
    @property
    def commands_sent(self) -> int: ...
    @property
    def commands_timed_out(self) -> int: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def offline_dropped(self) -> int: ...


def link_counters(link: LinkCounts | None) -> dict[str, dict[str, int]]:
    """The link's counters as ``/metrics`` families: ``scalerunner_{name}_total{kind|reason}``.

    ``mqtt_link`` counts the link's own life: ``reconnects`` to the broker, and ``offline_dropped``,
    offline states (Wills) dropped because the broker closed the link within their hold (a stopping
    mosquitto publishes every Will first; docs/mqtt.md).
    """
    if link is None:
        return {}
    return {
        "messages_ingested": dict(link.ingested),
        "messages_rejected": dict(link.rejected),
        "commands": {"sent": link.commands_sent, "timed_out": link.commands_timed_out},
        "mqtt_link": {"reconnects": link.reconnects, "offline_dropped": link.offline_dropped},
    }


class CoordinatorCollector(Collector):
    def __init__(
        self,
        nodes: Callable[[], list[NodeView]],
        counters: Callable[[], Mapping[str, Mapping[str, int]]],
    ) -> None:
        self._nodes = nodes
        self._counters = counters

    def collect(self) -> Iterable[Metric]:
        nodes = self._nodes()
        state = GaugeMetricFamily(
            "scalerunner_node_state", "1 for the node's lifecycle state", labels=["node", "state"]
        )
        health = GaugeMetricFamily(
            "scalerunner_node_health", "1 for the node's health", labels=["node", "health"]
        )
        load = GaugeMetricFamily("scalerunner_node_load1", "1-minute load average", labels=["node"])
        cpu = GaugeMetricFamily("scalerunner_node_cpu_percent", "CPU busy %", labels=["node"])
        mem = GaugeMetricFamily("scalerunner_node_memory_used_bytes", "memory in use", labels=["node"])
        temp = GaugeMetricFamily("scalerunner_node_temperature_celsius", "SoC temperature", labels=["node"])
        age = GaugeMetricFamily(
            "scalerunner_node_telemetry_age_seconds", "age of the last telemetry", labels=["node"]
        )
        for n in nodes:
            for s in STATES:
                state.add_metric([n.name, s], 1.0 if n.state == s else 0.0)
            for h in HEALTHS:
                health.add_metric([n.name, h], 1.0 if n.health == h else 0.0)
            t = n.telemetry
            if t is not None:
                load.add_metric([n.name], t.load1)
                cpu.add_metric([n.name], t.cpu_pct)
                mem.add_metric([n.name], t.mem_used_mb * 1024 * 1024)
                age.add_metric([n.name], t.age_s)
                if t.temp_c is not None:
                    temp.add_metric([n.name], t.temp_c)
        yield from (state, health, load, cpu, mem, temp, age)
        for name, by_label in self._counters().items():
            label = "reason" if name.endswith("rejected") else "kind"
            fam = CounterMetricFamily(f"scalerunner_{name}", f"coordinator counter {name}", labels=[label])
            for key, value in sorted(by_label.items()):
                fam.add_metric([key], float(value))
            yield fam


def render(collector: CoordinatorCollector, *more: Collector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    for c in (collector, *more):
        registry.register(c)
    return bytes(generate_latest(registry))
