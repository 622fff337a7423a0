"""MQTT topic names: built and parsed in one place.

Everything a node publishes lies under ``scalerunner/v1/{cluster}/nodes/{node}/`` so
one ACL pattern line (``%u`` is a whole topic level) confines each node. Names
are checked so that they can never carry MQTT wildcards or level separators.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

ROOT = "scalerunner/v1"

# A node, cluster or job name: lower-case, digits and '-', like a DNS label.
NAME_RE = re.compile(r"\A[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


class TopicError(ValueError):
    """A topic or a name in it that is not one of ours; ``topic`` is what was given."""

    def __init__(self, topic: str, detail: str) -> None:
        super().__init__(f"topic {topic!r}: {detail}")
        self.topic = topic
        self.detail = detail


class Kind(StrEnum):
    STATE = "state"
    TELEMETRY = "telemetry"
    CMD = "cmd"
    REPLY = "reply"
    JOB_LOG = "log"
    JOB_STATUS = "status"
    COORDINATOR_STATE = "coordinator"


def check_name(what: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise TopicError(
            name, f"{what} name must be 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
        )
    return name


@dataclass(frozen=True)
class Topic:
    cluster: str
    kind: Kind
    node: str | None = None
    job: str | None = None

    def __str__(self) -> str:
        base = f"{ROOT}/{self.cluster}"
        if self.kind is Kind.COORDINATOR_STATE:
            return f"{base}/coordinator/state"
        if self.kind in (Kind.JOB_LOG, Kind.JOB_STATUS):
            return f"{base}/nodes/{self.node}/jobs/{self.job}/{self.kind.value}"
        return f"{base}/nodes/{self.node}/{self.kind.value}"


def node_topic(cluster: str, node: str, kind: Kind) -> str:
    if kind in (Kind.JOB_LOG, Kind.JOB_STATUS, Kind.COORDINATOR_STATE):
        raise ValueError(f"{kind} is not a node topic")
    return str(Topic(check_name("cluster", cluster), kind, check_name("node", node)))


def job_topic(cluster: str, node: str, job: str, kind: Kind) -> str:
    if kind not in (Kind.JOB_LOG, Kind.JOB_STATUS):
        raise ValueError(f"{kind} is not a job topic")
    return str(Topic(check_name("cluster", cluster), kind, check_name("node", node), check_name("job", job)))


def coordinator_topic(cluster: str) -> str:
    return str(Topic(check_name("cluster", cluster), Kind.COORDINATOR_STATE))


def node_filter(cluster: str, kind: Kind) -> str:
    """Subscription filter for one kind of topic across all nodes, e.g. every node's state."""
    tail = f"jobs/+/{kind.value}" if kind in (Kind.JOB_LOG, Kind.JOB_STATUS) else kind.value
    return f"{ROOT}/{check_name('cluster', cluster)}/nodes/+/{tail}"


def parse_topic(topic: str) -> Topic:
    """The parts of one of our topics; TopicError for anything else."""
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != ROOT:
        raise TopicError(topic, f"not under {ROOT}/")
    cluster = parts[2]
    check_name("cluster", cluster)
    rest = parts[3:]
    if rest == ["coordinator", "state"]:
        return Topic(cluster, Kind.COORDINATOR_STATE)
    if rest[0] != "nodes" or len(rest) < 3:
        raise TopicError(topic, "expected nodes/{node}/... or coordinator/state")
    node = check_name("node", rest[1])
    if len(rest) == 3 and rest[2] in ("state", "telemetry", "cmd", "reply"):
        return Topic(cluster, Kind(rest[2]), node)
    if len(rest) == 5 and rest[2] == "jobs" and rest[4] in ("log", "status"):
        return Topic(cluster, Kind(rest[4]), node, check_name("job", rest[3]))
    raise TopicError(topic, f"unknown node topic {'/'.join(rest[2:])!r}")
