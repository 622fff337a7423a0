"""MQTT topics and payloads of the control plane (docs/mqtt.md)."""

from __future__ import annotations

from .payloads import (
    MAX_PAYLOAD,
    SCHEMA,
    Capacity,
    Command,
    CoordinatorState,
    JobSummary,
    NodeState,
    PayloadError,
    Reply,
    Telemetry,
    decode,
    encode,
)
from .topics import (
    ROOT,
    Kind,
    Topic,
    TopicError,
    check_name,
    coordinator_topic,
    job_topic,
    node_filter,
    node_topic,
    parse_topic,
)

__all__ = [
    "MAX_PAYLOAD",
    "ROOT",
    "SCHEMA",
    "Capacity",
    "Command",
    "CoordinatorState",
    "JobSummary",
    "Kind",
    "NodeState",
    "PayloadError",
    "Reply",
    "Telemetry",
    "Topic",
    "TopicError",
    "check_name",
    "coordinator_topic",
    "decode",
    "encode",
    "job_topic",
    "node_filter",
    "node_topic",
    "parse_topic",
]
