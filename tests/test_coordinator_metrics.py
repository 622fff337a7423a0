"""`/metrics` carries the MQTT link's own counters: reconnects and offline states dropped on a closed link."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
from prometheus_client.parser import text_string_to_metric_families

from scalerunner.coordinator.metrics import CoordinatorCollector, link_counters, render
from scalerunner.coordinator.mqttlink import CoordinatorLink, MqttSettings
from scalerunner.protocol.mqtt import Kind, NodeState, Telemetry, encode, node_topic

CLUSTER, NODE = "lab", "rack1-01"


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    }


def test_offline_states_dropped_when_the_broker_closes_the_link_are_counted_on_metrics() -> None:
    states: list[NodeState] = []

    async def on_state(state: NodeState) -> None:
        states.append(state)

    async def on_telemetry(_tele: Telemetry) -> None:
        return None

    async def scenario() -> CoordinatorLink:
        # nothing listens on port 1: each connection attempt fails as a broker going away does
        link = CoordinatorLink(
            MqttSettings(host="127.0.0.1", port=1, username="c", password="x", cluster=CLUSTER),
            known_nodes=lambda name: name == NODE,
            on_state=on_state,
            on_telemetry=on_telemetry,
        )
        will = NodeState(node=NODE, status="offline", conn_seq=3, ts=time.time())
        topic = node_topic(CLUSTER, NODE, Kind.STATE)
        await link._dispatch(aiomqtt.Message(topic, encode(will), qos=1, retain=True, mid=1, properties=None))
        await link.start()
        for _ in range(100):
            if link.offline_dropped:
                break
            await asyncio.sleep(0.02)
        await link.stop()
        return link

    link = asyncio.run(scenario())
    assert states == []  # the held Will was never acted on
    samples = _samples(render(CoordinatorCollector(lambda: [], lambda: link_counters(link))))
    assert samples[("scalerunner_mqtt_link_total", (("kind", "offline_dropped"),))] == 1
    assert samples[("scalerunner_mqtt_link_total", (("kind", "reconnects"),))] == link.reconnects
    assert samples[("scalerunner_messages_ingested_total", (("kind", "state"),))] == 1


def test_no_link_no_link_counters() -> None:
    assert link_counters(None) == {}
