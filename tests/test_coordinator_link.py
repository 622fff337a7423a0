"""The coordinator's MQTT ingest (``CoordinatorLink._dispatch``) without a broker: what it hands on,
what it rejects and counts by reason, and that no single message can end the link."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.mqttlink import CoordinatorLink, MqttSettings, OfflineHold
from scalerunner.coordinator.store import StoreError
from scalerunner.protocol.mqtt import Kind, NodeState, Telemetry, encode, node_topic

CLUSTER, NODE = "lab", "rack1-01"


class Handlers:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.states: list[NodeState] = []
        self.telemetry: list[Telemetry] = []
        self.fail = fail

    async def on_state(self, state: NodeState) -> None:
        if self.fail is not None:
            raise self.fail
        self.states.append(state)

    async def on_telemetry(self, tele: Telemetry) -> None:
        self.telemetry.append(tele)


def _link(handlers: Handlers) -> CoordinatorLink:
    return CoordinatorLink(
        MqttSettings(host="127.0.0.1", port=1, username="coordinator", password="x", cluster=CLUSTER),
        known_nodes=lambda name: name == NODE,
        on_state=handlers.on_state,
        on_telemetry=handlers.on_telemetry,
    )


def _message(kind: Kind, payload: bytes, node: str = NODE) -> aiomqtt.Message:
    return aiomqtt.Message(
        node_topic(CLUSTER, node, kind), payload, qos=1, retain=False, mid=1, properties=None
    )


def _dispatch(link: CoordinatorLink, *messages: aiomqtt.Message) -> None:
    async def run() -> None:
        for m in messages:
            await link._dispatch(m)

    asyncio.run(run())


def test_valid_state_and_telemetry_are_handed_on_and_counted_as_ingested() -> None:
    h = Handlers()
    link = _link(h)
    tele = Telemetry(node=NODE, ts=1.0, load1=0.5, cpu_pct=3.0, mem_used_mb=10, mem_total_mb=20)
    _dispatch(
        link,
        _message(Kind.STATE, encode(NodeState(node=NODE, status="online", conn_seq=7))),
        _message(Kind.TELEMETRY, encode(tele)),
    )
    assert [s.conn_seq for s in h.states] == [7] and h.telemetry == [tele]
    assert link.ingested == {"state": 1, "telemetry": 1} and not link.rejected


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "payload"),
        (b'{"node":"rack1-01","status":"online","conn_seq":1,"schema":2}', "payload"),
        (encode(NodeState(node=NODE, status="online", conn_seq=2**64 - 1)), "payload"),  # no store holds it
        (encode(NodeState(node="rack1-02", status="online", conn_seq=1)), "node_mismatch"),
    ],
)
def test_a_bad_state_payload_is_rejected_by_reason_and_not_handed_on(payload: bytes, reason: str) -> None:
    h = Handlers()
    link = _link(h)
    _dispatch(link, _message(Kind.STATE, payload))
    assert h.states == [] and link.rejected == {reason: 1} and not link.ingested


def test_a_message_whose_handler_fails_is_counted_as_an_error_and_the_link_goes_on() -> None:
    h = Handlers(fail=StoreError("db", "disk full"))
    link = _link(h)
    tele = Telemetry(node=NODE, ts=1.0, load1=0.5, cpu_pct=3.0, mem_used_mb=10, mem_total_mb=20)
    _dispatch(
        link,
        _message(Kind.STATE, encode(NodeState(node=NODE, status="online", conn_seq=7))),
        _message(Kind.TELEMETRY, encode(tele)),  # still handled: the loop did not end
    )
    assert link.rejected == {"error": 1} and h.telemetry == [tele]


# -- offline states wait out a hold (mosquitto publishes every Will as it shuts down) --------------


def _offline(node: str, seq: int) -> NodeState:
    return NodeState(node=node, status="offline", conn_seq=seq, agent_version="t", arch="amd64")


def test_an_offline_state_is_due_only_after_the_hold() -> None:
    hold = OfflineHold(0.5)
    hold.offer(_offline("n1", 1), now=10.0)
    assert hold.next_due() == 10.5 and hold.due(10.49) == []
    assert [s.node for s in hold.due(10.5)] == ["n1"]
    assert hold.next_due() is None and hold.due(99.0) == []


def test_the_link_going_down_within_the_hold_drops_the_held_states() -> None:
    hold = OfflineHold(0.5)
    hold.offer(_offline("n2", 1), now=0.0)
    hold.offer(_offline("n1", 1), now=0.1)
    assert hold.drop_all() == ["n1", "n2"]
    assert hold.due(10.0) == [] and hold.next_due() is None


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 5), st.floats(0, 1)), max_size=30))
def test_each_node_has_at_most_its_newest_offline_state_held_and_all_come_due(
    offers: list[tuple[str, int, float]],
) -> None:
    hold, now, newest = OfflineHold(0.5), 0.0, {}
    for node, seq, dt in offers:
        now += dt
        hold.offer(_offline(node, seq), now)
        newest[node] = max(newest.get(node, seq), seq)
    released = hold.due(now + 0.5)
    assert sorted(s.node for s in released) == sorted(newest)
    assert {s.node: s.conn_seq for s in released} == newest
