"""MQTT topics and payloads: built and parsed in one place, bad input refused with a reason."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.protocol.mqtt import (
    Capacity,
    Command,
    Kind,
    NodeState,
    PayloadError,
    Telemetry,
    TopicError,
    decode,
    encode,
    job_topic,
    node_filter,
    node_topic,
    parse_topic,
)

names = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?\Z")
node_kinds = st.sampled_from([Kind.STATE, Kind.TELEMETRY, Kind.CMD, Kind.REPLY])


@given(names, names, node_kinds)
def test_node_topics_round_trip(cluster: str, node: str, kind: Kind) -> None:
    t = parse_topic(node_topic(cluster, node, kind))
    assert (t.cluster, t.node, t.kind, t.job) == (cluster, node, kind, None)


@given(names, names, names, st.sampled_from([Kind.JOB_LOG, Kind.JOB_STATUS]))
def test_job_topics_round_trip_and_stay_under_the_node_prefix(
    cluster: str, node: str, job: str, kind: Kind
) -> None:
    topic = job_topic(cluster, node, job, kind)
    assert topic.startswith(f"scalerunner/v1/{cluster}/nodes/{node}/")
    t = parse_topic(topic)
    assert (t.node, t.job, t.kind) == (node, job, kind)


@pytest.mark.parametrize("bad", ["rack+1", "rack/1", "#", "", "-a", "A", "a" * 64])
def test_names_that_could_escape_a_topic_level_are_refused(bad: str) -> None:
    with pytest.raises(TopicError):
        node_topic("lab", bad, Kind.STATE)


@given(st.text(max_size=80))
def test_parse_topic_accepts_only_what_it_can_rebuild_and_raises_only_topic_error(topic: str) -> None:
    try:
        parsed = parse_topic(topic)
    except TopicError:
        return
    assert str(parsed) == topic


def test_filters_match_one_level_per_node() -> None:
    assert node_filter("lab", Kind.STATE) == "scalerunner/v1/lab/nodes/+/state"
    assert node_filter("lab", Kind.JOB_LOG) == "scalerunner/v1/lab/nodes/+/jobs/+/log"


states = st.builds(
    NodeState,
    node=names,
    status=st.sampled_from(["online", "offline"]),
    conn_seq=st.integers(0, 2**31),
    arch=st.sampled_from(["amd64", "arm64", "riscv64"]),
    labels=st.lists(st.from_regex(r"\A[a-z0-9=]{1,10}\Z"), max_size=4),
    capacity=st.none() | st.builds(Capacity, cpus=st.integers(1, 64), memory_mb=st.integers(1, 10**6)),
)


@given(states)
def test_node_state_round_trips_as_json(state: NodeState) -> None:
    assert decode(encode(state), NodeState) == state


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not json", "not JSON"),
        (b'{"schema": 2, "node": "n1", "status": "online", "conn_seq": 1}', r"\$.schema"),
        (b'{"schema": 1, "node": "n1", "status": "asleep", "conn_seq": 1}', r"\$.status"),
        (b'{"schema": 1, "node": "n1", "status": "online"}', "conn_seq"),
        (b'{"schema": 1, "node": "n1", "status": "online", "conn_seq": -1}', r"\$.conn_seq"),
        (b"[" + b"1," * 40000 + b"1]", "at most 65536"),
    ],
)
def test_bad_state_payloads_are_refused_with_a_reason(data: bytes, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        decode(data, NodeState)


def test_telemetry_bounds_are_validated() -> None:
    raw = msgspec.json.encode(
        {
            "schema": 1,
            "node": "n1",
            "ts": 1.0,
            "load1": 0.5,
            "cpu_pct": 130,
            "mem_used_mb": 1,
            "mem_total_mb": 2,
        }
    )
    with pytest.raises(PayloadError, match="cpu_pct"):
        decode(raw, Telemetry)


def test_unknown_command_is_refused() -> None:
    with pytest.raises(PayloadError, match=r"\$.cmd"):
        decode(b'{"schema": 1, "cmd": "format-disk"}', Command)


def test_a_trailing_newline_never_passes_as_a_name() -> None:
    with pytest.raises(TopicError):
        node_topic("lab", "rack1\n", Kind.STATE)
    with pytest.raises(PayloadError, match=r"\$.node"):
        decode(b'{"schema": 1, "node": "rack1\\n", "status": "online", "conn_seq": 1}', NodeState)
