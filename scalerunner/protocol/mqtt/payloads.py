"""MQTT payloads: JSON, schema-versioned, validated by msgspec (not by hand).

Every payload carries ``schema`` (the version of this file's layouts). A decoder
refuses a payload that is not JSON, has another schema, misses a field, has a
field of the wrong type or out of range, or is larger than ``MAX_PAYLOAD``: ``PayloadError`` says
which topic kind and what was wrong, and the receiver changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec

SCHEMA = 1
MAX_PAYLOAD = 64 * 1024  # a log chunk is the largest payload; anything bigger is refused unread

Name = Annotated[str, msgspec.Meta(pattern=r"\A[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")]
Label = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z0-9_.:=/-]{1,64}\Z")]
# Integers stop at 2**53: every JSON reader holds them exactly, and so does the store (SQLite's
# INTEGER is 64-bit). A bigger one is a bad payload, not a number to carry around.
MAX_INT = 2**53
NonNeg = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]


class PayloadError(ValueError):
    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"bad {what} payload: {detail}")
        self.what = what
        self.detail = detail


class _Base(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    schema: Literal[1] = 1  # == SCHEMA


class Capacity(msgspec.Struct, kw_only=True):
    cpus: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    memory_mb: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    slots: NonNeg = 1


class NodeState(_Base):
    """Retained on nodes/{node}/state. ``conn_seq`` orders states across reconnects
    (like Sparkplug's bdSeq): the agent's online state and its Will share the seq of
    one connection, and a receiver ignores a state older than the one it holds."""

    node: Name
    status: Literal["online", "offline"]
    conn_seq: NonNeg
    agent_version: str = ""
    arch: str = ""
    labels: list[Label] = []
    capacity: Capacity | None = None
    ts: float = 0.0
    # The node takes no new jobs (set by the drain command, cleared by undrain). Added after
    # schema 1 was first written: a default, so older decoders and payloads still agree.
    draining: bool = False


class JobSummary(msgspec.Struct, kw_only=True):
    job: Name
    attempt: NonNeg = 1


class Telemetry(_Base):
    node: Name
    ts: float
    load1: Annotated[float, msgspec.Meta(ge=0)]
    cpu_pct: Percent
    mem_used_mb: NonNeg
    mem_total_mb: NonNeg
    temp_c: float | None = None
    disk_free_mb: NonNeg | None = None
    jobs: list[JobSummary] = []


class Command(_Base):
    """coordinator -> node on nodes/{node}/cmd (MQTT 5 response topic + correlation data)."""

    cmd: Literal["drain", "undrain", "identify", "reboot", "run", "cancel"]
    args: dict[str, Any] = {}


class Reply(_Base):
    ok: bool
    error: str = ""
    result: dict[str, Any] = {}


class CoordinatorState(_Base):
    status: Literal["online", "offline"]
    version: str = ""
    ts: float = 0.0


_encoder = msgspec.json.Encoder()
T = TypeVar("T", bound=_Base)


def encode(payload: _Base) -> bytes:
    return _encoder.encode(payload)


def decode(data: bytes, kind: type[T]) -> T:
    """Validate ``data`` as a ``kind`` payload; PayloadError names what is wrong."""
    what = kind.__name__
    if len(data) > MAX_PAYLOAD:
        raise PayloadError(what, f"{len(data)} bytes, at most {MAX_PAYLOAD}")
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise PayloadError(what, str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise PayloadError(what, f"not JSON: {exc}") from exc
